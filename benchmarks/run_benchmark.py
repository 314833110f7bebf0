#!/usr/bin/env python
"""Side-by-side benchmark of softcar against its baselines and a full fine-tuning reference.

Methods (same run, same data, same machine):

* ``bm25``          lexical BM25 (``bm25s``)
* ``inner_product`` the frozen packaged all-MiniLM-L6-v2 + a matrix product over document vectors
* ``softcar``       ``ClassifierRetriever`` (adapter + classifier head)
* ``head_only``     ``TrainConfig(train_adapter=False)``
* ``adapter_only``  ``TrainConfig(train_head=False)``
* ``full_ft``       the whole encoder fine-tuned with sentence-transformers'
                    ``MultipleNegativesRankingLoss`` on the same (text, document) examples that
                    ``fit`` uses, then inner-product search over its document embeddings

Settings: (A) documents only, tested on the original and the reworded questions; (B) the
original questions are labelled training pairs, tested on the reworded questions.

Every training job runs in a fresh ``spawn`` subprocess, so that its peak memory can be read
from ``/proc/self/status`` (VmHWM, reset after model load through ``/proc/self/clear_refs``).

Usage::

    python benchmarks/run_benchmark.py                 # full run (~35 min on 2 CPU cores; --ft-settings A: ~30)
    python benchmarks/run_benchmark.py --quick         # smoke run (< 2 min)
    python benchmarks/run_benchmark.py --tune          # softcar TrainConfig variants only
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import statistics
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAQ_PATH = HERE.parent.parent / "shared" / "data" / "python-faq"  # ../shared beside the repo
FAQ_REWORDED = HERE / "data" / "python_faq_reworded.tsv"
METRICS = ["R@1", "R@5", "R@10", "MRR@10", "nDCG@10"]
TARGETS = {
    "A_recall1_gain": 0.05,
    "B_recall1": 0.95,
    "step_time_ratio": 0.4,
    "latency_ratio": 1.1,
}


# --------------------------------------------------------------------------- memory helpers
def _status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in KiB (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class PeakMemory:
    """Peak resident memory of a code block above the RSS at its start, in MiB.

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) at the start, so
    the figure is ``max RSS during the block - RSS at its start``. Where that reset is not
    allowed it falls back to ``ru_maxrss`` (then the peak may include the model load).
    """

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        self.method = "VmHWM after clear_refs reset - VmRSS at start"
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self.method = "ru_maxrss (not reset) - VmRSS at start"
        self.start_kib = _status().get("VmRSS", 0)
        return self

    def __exit__(self, *exc: Any) -> None:
        status = _status()
        peak = status.get("VmHWM") if self.method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_kib = int(peak or 0)

    def result(self) -> dict[str, Any]:
        return {
            "rss_before_mib": round(self.start_kib / 1024, 1),
            "peak_rss_mib": round(self.peak_kib / 1024, 1),
            "peak_delta_mib": round((self.peak_kib - self.start_kib) / 1024, 1),
            "measured": self.method,
        }


# --------------------------------------------------------------------------- data
def load_dataset(name: str, max_docs: int | None = None) -> dict[str, Any]:
    """corpus, the original / reworded query splits and the labelled training pairs."""
    from softcar.data import load_beir, packaged_dataset_path

    if name == "chatterbot_qa":
        ds = load_beir(packaged_dataset_path("chatterbot_qa"))
        original = ds.split("original")
        reworded = ds.split("test")
        train_pairs = ds.training_pairs("train")
    elif name == "python-faq":
        ds = load_beir(FAQ_PATH)
        original = ds.split("test")
        train_pairs = ds.training_pairs("test")
        queries, qrels = {}, {}
        with open(FAQ_REWORDED, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                queries[row["query-id"]] = row["text"]
                qrels[row["query-id"]] = {row["corpus-id"]: 1}
        reworded = (queries, qrels)
    else:
        raise SystemExit(f"unknown dataset {name!r}")
    corpus = ds.corpus
    if max_docs:
        corpus = corpus[:max_docs]
        keep = {d.id for d in corpus}

        def restrict(split: tuple[dict, dict]) -> tuple[dict, dict]:
            queries, qrels = split
            qrels = {q: docs for q, docs in qrels.items() if set(docs) <= keep}
            return {q: queries[q] for q in qrels}, qrels

        original, reworded = restrict(original), restrict(reworded)
        train_pairs = [(t, d) for t, d in train_pairs if d in keep]
    return {"corpus": corpus, "original": original, "reworded": reworded, "train_pairs": train_pairs}


def dataset_available(name: str) -> str | None:
    """None when usable, else why not."""
    if name == "python-faq" and not (FAQ_PATH / "corpus.jsonl").is_file():
        return f"{FAQ_PATH} is absent"
    return None


def eval_splits(setting: str) -> list[str]:
    # A: no labels, both kinds of question are unseen. B: originals were trained on.
    return ["original", "reworded"] if setting == "A" else ["reworded", "original"]


def split_label(setting: str, split: str) -> str:
    return "original (seen)" if setting == "B" and split == "original" else split


# --------------------------------------------------------------------------- jobs (subprocess)
def _setup_worker(threads: int) -> None:
    import logging
    import warnings

    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _evaluate(retriever: Any, data: dict[str, Any], splits: list[str]) -> dict[str, dict[str, float]]:
    from softcar.evaluation import evaluate

    return {split: evaluate(retriever, *data[split]) for split in splits}


def interleaved_latency(retrievers: dict[str, Any], queries: list[str], rounds: int, k: int = 10) -> dict[str, Any]:
    """Single-query latency; methods alternate query by query (order flipped every query)."""
    names = list(retrievers)
    for name in names:  # warm-up
        for q in queries[:5]:
            retrievers[name].retrieve(q, k=k)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for i, q in enumerate(queries):
            order = names if (i + r) % 2 == 0 else names[::-1]
            for name in order:
                start = time.perf_counter()
                retrievers[name].retrieve(q, k=k)
                times[name].append((time.perf_counter() - start) * 1000)
    out: dict[str, Any] = {}
    for name, values in times.items():
        values.sort()
        out[name] = {
            "p50_ms": statistics.median(values),
            "p95_ms": values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))],
            "mean_ms": statistics.fmean(values),
            "samples": len(values),
        }
    return out


def job_baselines(spec: dict[str, Any]) -> dict[str, Any]:
    _setup_worker(spec["threads"])
    from softcar import BM25Retriever, InnerProductRetriever

    data = load_dataset(spec["dataset"], spec.get("max_docs"))
    out: dict[str, Any] = {}
    for name, make in (("bm25", BM25Retriever), ("inner_product", InnerProductRetriever)):
        start = time.perf_counter()
        retriever = make().fit(data["corpus"])
        out[name] = {
            "index_s": time.perf_counter() - start,
            "metrics": _evaluate(retriever, data, ["original", "reworded"]),
            "trainable_params": 0,
        }
    return out


def _train_config(overrides: dict[str, Any]) -> Any:
    from softcar import TrainConfig

    return TrainConfig(**{"show_progress": False, **overrides})


def job_softcar(spec: dict[str, Any]) -> dict[str, Any]:
    """Fit one ClassifierRetriever variant, measure its training loop, evaluate it."""
    _setup_worker(spec["threads"])
    import softcar.retriever as retriever_module
    from softcar import ClassifierRetriever, InnerProductRetriever

    data = load_dataset(spec["dataset"], spec.get("max_docs"))
    config = _train_config(spec["train"])
    retriever = ClassifierRetriever(adapter=spec.get("adapter", "linear"), config=config)
    pairs = data["train_pairs"] if spec["setting"] == "B" else None

    # Time the training loop itself (not document encoding) by wrapping the function fit calls.
    loop: dict[str, Any] = {}
    original_train = retriever_module.train_classifier

    def timed_train(model, examples, tokenize, cfg, *, epochs, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        losses = original_train(model, examples, tokenize, cfg, epochs=epochs, **kwargs)
        loop.update(seconds=time.perf_counter() - start, examples=len(examples), epochs=epochs, losses=losses)
        return losses

    retriever_module.train_classifier = timed_train
    try:
        with PeakMemory() as memory:
            start = time.perf_counter()
            retriever.fit(data["corpus"], pairs)
            fit_s = time.perf_counter() - start
    finally:
        retriever_module.train_classifier = original_train

    model = retriever.model
    adapter_params = sum(p.numel() for p in model.adapter.parameters())
    head_params = model.head.weight.numel()
    trainable = (adapter_params if config.train_adapter else 0) + (head_params if config.train_head else 0)
    seen = loop.get("examples", 0) * loop.get("epochs", 0)
    result: dict[str, Any] = {
        "fit_s": fit_s,
        "train_loop_s": loop.get("seconds", 0.0),
        "examples": loop.get("examples", 0),
        "epochs": loop.get("epochs", 0),
        "ms_per_example": 1000 * loop.get("seconds", 0.0) / seen if seen else None,
        "final_loss": (loop.get("losses") or [None])[-1],
        "memory": memory.result(),
        "trainable_params": trainable,
        "adapter_params": adapter_params,
        "head_params": head_params,
        "metrics": _evaluate(retriever, data, eval_splits(spec["setting"])),
    }
    if spec.get("latency"):
        frozen = InnerProductRetriever().fit(data["corpus"])
        queries = list(data["original"][0].values())[: spec.get("latency_queries", 200)]
        result["latency"] = interleaved_latency(
            {"softcar": retriever, "inner_product": frozen}, queries, spec.get("latency_rounds", 3)
        )
    return result


class SentenceTransformerRetriever:
    """Inner-product search over a (fine-tuned) SentenceTransformer's embeddings; same API."""

    def __init__(self, model: Any, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self._documents: list[Any] = []
        self._matrix: Any = None

    @property
    def documents(self) -> list[Any]:
        return list(self._documents)

    def _encode(self, texts: list[str], max_length: int) -> Any:
        self.model.max_seq_length = max_length
        return self.model.encode(
            texts, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        )

    def fit(self, documents: list[Any], queries: Any = None) -> SentenceTransformerRetriever:
        self._documents = list(documents)
        self._matrix = self._encode([d.text for d in self._documents], 256)
        return self

    def retrieve(self, query: str, k: int = 4) -> list[Any]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: list[str], k: int = 4) -> list[list[Any]]:
        import torch

        from softcar.documents import ScoredDocument

        scores = self._encode(list(queries), 64) @ self._matrix.T
        top = torch.topk(scores, min(k, len(self._documents)), dim=1)
        return [
            [ScoredDocument(document=self._documents[i], score=float(s)) for s, i in zip(vs.tolist(), ix.tolist())]
            for vs, ix in zip(top.values.cpu(), top.indices.cpu())
        ]


def no_duplicate_batches(labels: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches in which no document appears twice (in-batch negatives stay negative)."""
    pending = deque(rng.sample(range(len(labels)), len(labels)))
    batches = []
    while pending:
        batch, seen, skipped = [], set(), []
        while pending and len(batch) < batch_size:
            i = pending.popleft()
            if labels[i] in seen:
                skipped.append(i)
            else:
                batch.append(i)
                seen.add(labels[i])
        pending.extendleft(reversed(skipped))
        batches.append(batch)
    return batches


def _mnrl(model: Any) -> Any:
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # older layout
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    return MultipleNegativesRankingLoss(model)


def _features(model: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    model.max_seq_length = max_length
    return dict(model.tokenize(texts))


def job_full_ft(spec: dict[str, Any]) -> dict[str, Any]:
    """Full fine-tuning reference: every encoder weight trains with MNRL on fit's examples."""
    _setup_worker(spec["threads"])
    import torch
    from sentence_transformers import SentenceTransformer

    from softcar import ClassifierRetriever
    from softcar.encoder import default_encoder_path

    data = load_dataset(spec["dataset"], spec.get("max_docs"))
    pairs = data["train_pairs"] if spec["setting"] == "B" else None
    # epochs=0: fit only indexes, so training_examples gives exactly what softcar's fit trains on.
    probe = ClassifierRetriever(config=_train_config({**spec["train"], "epochs": 0})).fit(data["corpus"], pairs)
    rows = probe.training_examples(pairs)
    doc_texts = [d.text for d in probe.documents]
    del probe
    cfg = _train_config(spec["train"])
    examples = [(text, doc_texts[row]) for text, row in rows]
    labels = [row for _, row in rows]

    torch.manual_seed(cfg.seed)
    model = SentenceTransformer(str(default_encoder_path()), device="cpu")
    loss_fn = _mnrl(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rng = random.Random(cfg.seed)
    epochs = spec["epochs"]
    losses = []
    model.train()
    with PeakMemory() as memory:
        start = time.perf_counter()
        for _ in range(epochs):
            total = 0.0
            for batch in no_duplicate_batches(labels, cfg.batch_size, rng):
                q = _features(model, [examples[i][0] for i in batch], 64)
                d = _features(model, [examples[i][1] for i in batch], 256)
                loss = loss_fn([q, d], None)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / len(examples))
        loop_s = time.perf_counter() - start
    model.eval()
    retriever = SentenceTransformerRetriever(model).fit(data["corpus"])
    seen = len(examples) * epochs
    return {
        "train_loop_s": loop_s,
        "examples": len(examples),
        "epochs": epochs,
        "ms_per_example": 1000 * loop_s / seen if seen else None,
        "final_loss": losses[-1] if losses else None,
        "memory": memory.result(),
        "trainable_params": trainable,
        "metrics": _evaluate(retriever, data, eval_splits(spec["setting"])),
    }


def job_micro(spec: dict[str, Any]) -> dict[str, Any]:
    """One training step (forward + backward + AdamW step), same batch and sequence length.

    ``softcar``: adapter + head trainable, frozen encoder; ``full_ft_same_loss``: the same
    model and cross-entropy loss with every encoder weight trainable too; ``full_ft_mnrl``
    (context only): a sentence-transformers MNRL step, queries and documents both of that length.
    Steps alternate between methods; the median over ``steps`` per method is reported.
    """
    _setup_worker(spec["threads"])
    import torch
    from torch.nn import functional as F

    from softcar import ClassifierRetriever

    data = load_dataset(spec["dataset"], spec.get("max_docs"))
    r = ClassifierRetriever(config=_train_config({"epochs": 0})).fit(data["corpus"])
    rows = r.training_examples()
    rng = random.Random(0)
    batch_size, length = spec["batch_size"], spec["seq_len"]
    sample = rng.sample(rows, batch_size)
    texts = [t for t, _ in sample]
    labels = torch.tensor([row for _, row in sample])
    inputs = r.tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    model = r.model
    encoder_params = list(model.encoder.model.parameters())
    light = list(model.adapter.parameters()) + [model.head.weight]

    def make_step(full: bool):  # type: ignore[no-untyped-def]
        params = light + (encoder_params if full else [])
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=1e-6)  # tiny lr: the model barely moves

        def step() -> None:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            model.train()
            scores = model(inputs["input_ids"], inputs["attention_mask"])
            loss = F.cross_entropy(scores * 20.0, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step, sum(p.numel() for p in params)

    steps = {}
    params = {}
    steps["softcar"], params["softcar"] = make_step(False)
    steps["full_ft_same_loss"], params["full_ft_same_loss"] = make_step(True)
    if spec.get("mnrl", True):
        from sentence_transformers import SentenceTransformer

        from softcar.encoder import default_encoder_path

        st = SentenceTransformer(str(default_encoder_path()), device="cpu")
        st_loss = _mnrl(st)
        st_opt = torch.optim.AdamW(st.parameters(), lr=1e-6)
        st.max_seq_length = length

        def fixed(batch_texts: list[str]) -> dict[str, Any]:
            # padded to the same fixed length as the softcar batch
            return dict(st.tokenizer(batch_texts, padding="max_length", truncation=True, max_length=length,
                                     return_tensors="pt"))

        q = fixed(texts)
        d = fixed([r.documents[i].text for _, i in sample])

        def st_step() -> None:
            st.train()
            loss = st_loss([q, d], None)
            st_opt.zero_grad(set_to_none=True)
            loss.backward()
            st_opt.step()

        steps["full_ft_mnrl"] = st_step
        params["full_ft_mnrl"] = sum(p.numel() for p in st.parameters())
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {n: [] for n in steps}
    names = list(steps)
    for i in range(spec["steps"]):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append((time.perf_counter() - start) * 1000)
    out = {name: {"median_ms": statistics.median(v), "min_ms": min(v), "steps": len(v), "trainable_params": params[name]}
           for name, v in times.items()}
    out["batch_size"], out["seq_len"] = batch_size, length
    out["ratio_softcar_vs_full_same_loss"] = out["softcar"]["median_ms"] / out["full_ft_same_loss"]["median_ms"]
    if "full_ft_mnrl" in out:
        out["ratio_softcar_vs_full_mnrl"] = out["softcar"]["median_ms"] / out["full_ft_mnrl"]["median_ms"]
    return out


JOBS = {"baselines": job_baselines, "softcar": job_softcar, "full_ft": job_full_ft, "micro": job_micro}


def _run_job(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "result": JOBS[kind](spec)}
    except Exception as exc:  # reported, the run goes on
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


IN_PROCESS = False
NO_RUN = False


def run_in_subprocess(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Each job in a fresh spawned process: clean memory accounting, nothing shared.

    With ``--in-process`` (implied by ``--quick``) jobs run here instead: faster to start, but
    the memory figures are then less clean (allocator reuse between jobs).
    """
    start = time.perf_counter()
    if NO_RUN:
        return {"ok": False, "error": "not run (--no-run: assembled from earlier results)", "wall_s": 0.0}
    if IN_PROCESS:
        out = _run_job(kind, spec)
    else:
        with mp.get_context("spawn").Pool(1) as pool:
            out = pool.apply(_run_job, (kind, spec))
    out["wall_s"] = time.perf_counter() - start
    if not out["ok"]:
        print(f"  !! {kind} {spec.get('dataset')} {spec.get('setting', '')} {spec.get('name', '')} failed: {out['error']}",
              file=sys.stderr)
        print(out["traceback"], file=sys.stderr)
    return out


# --------------------------------------------------------------------------- plan
SOFTCAR_METHODS = {
    "softcar": {},
    "head_only": {"train_adapter": False},
    "adapter_only": {"train_head": False},
}

# Each variant overrides the default TrainConfig / adapter; "settings" limits where it runs (budget).
TUNING_VARIANTS: dict[str, dict[str, Any]] = {
    "epochs=0 (B: query prototypes, no training)": {"train": {"epochs": 0}, "settings": ["B"]},
    "query_prototype_weight=0": {"train": {"query_prototype_weight": 0.0}, "settings": ["B"]},
    "head_anchor=0": {"train": {"head_anchor": 0.0}},
    "lr x4 (2e-4 / 2e-3)": {"train": {"learning_rate": 2e-4, "head_learning_rate": 2e-3}, "settings": ["A"]},
}
QUICK_TUNING = {"default (linear, 4 ep)": {}, "logit_scale=40": {"train": {"logit_scale": 40.0}}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def metric_row(method: str, metrics: dict[str, float], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    row = {"method": method}
    row.update({m: metrics.get(m) for m in ["R@1", "R@5", "MRR@10", "nDCG@10"]})
    row.update(extra or {})
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="chatterbot_qa,python-faq")
    parser.add_argument("--settings", default="A,B")
    parser.add_argument("--epochs", type=int, default=None, help="softcar epochs (default: TrainConfig's)")
    parser.add_argument("--ft-epochs", type=int, default=1,
                        help="full fine-tuning epochs (default 1: capped to fit the 2-core budget; softcar uses 4)")
    parser.add_argument("--ft-lr", type=float, default=2e-5, help="full fine-tuning learning rate (AdamW)")
    parser.add_argument("--ft-datasets", default="chatterbot_qa",
                        help="datasets with the full fine-tuning reference (default: chatterbot_qa only, for time)")
    parser.add_argument("--ablations-datasets", default="chatterbot_qa",
                        help="datasets with head-only / adapter-only (default: chatterbot_qa only, for time)")
    parser.add_argument("--ft-settings", default="A,B", help="settings with the full fine-tuning reference")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the results already in --out (e.g. of an interrupted run) instead of re-running them")
    parser.add_argument("--no-run", action="store_true",
                        help="run nothing: assemble --out from --resume/--resume-from results and print the tables")
    parser.add_argument("--no-latency", action="store_true", help="skip the query-latency comparison")
    parser.add_argument("--resume-from", default=None, help="comma-separated result JSONs to reuse as with --resume")
    parser.add_argument("--tune", action="store_true", help="also run the softcar TrainConfig variants (chatterbot_qa)")
    parser.add_argument("--tune-only", action="store_true", help="run only the tuning variants")
    parser.add_argument("--micro-steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cpu count)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke configuration (< 2 min): chatterbot_qa only, 40 documents, 1 epoch, in-process")
    parser.add_argument("--in-process", action="store_true",
                        help="run jobs in this process (no per-job memory isolation)")
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    parser.add_argument("--merge-tuning", default=None, metavar="JSON",
                        help="no run: copy the tuning rows of JSON into --out (an earlier result) and re-print it")
    args = parser.parse_args(argv)
    if args.merge_tuning:
        report = json.loads(Path(args.out).read_text())
        extra = json.loads(Path(args.merge_tuning).read_text())
        # the default configuration's rows come from this run's own softcar results
        defaults = []
        for setting, results in report["datasets"].get("chatterbot_qa", {}).get("settings", {}).items():
            res = results.get("softcar", {})
            if "metrics" in res:
                defaults.append({"setting": setting, "variant": "default (main run)", "train": {}, "adapter": "linear",
                                 "metrics": res["metrics"], "train_loop_s": res["train_loop_s"],
                                 "ms_per_example": res["ms_per_example"], "trainable_params": res["trainable_params"]})
        rows = defaults + extra.get("tuning", [])
        report["tuning"] = sorted(rows, key=lambda r: r["setting"])
        report.setdefault("notes", []).append(
            f"tuning rows from a separate run: `{extra.get('command')}` ({extra.get('run_time_s', 0):.0f} s, "
            "run concurrently with the main run)")
        report["tuning_run"] = {k: extra.get(k) for k in ("command", "started", "run_time_s", "machine", "config")}
        report["markdown"] = render(report)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        print(report["markdown"])
        return 0

    import torch

    started = time.perf_counter()
    global IN_PROCESS, NO_RUN
    NO_RUN = args.no_run
    IN_PROCESS = args.in_process or args.quick
    if args.quick and args.datasets == parser.get_default("datasets"):
        args.datasets = "chatterbot_qa"
    threads = args.threads or os.cpu_count() or 1
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    settings = [s.strip().upper() for s in args.settings.split(",") if s.strip()]
    max_docs = 24 if args.quick else None
    base_train: dict[str, Any] = {}
    if args.epochs is not None:
        base_train["epochs"] = args.epochs
    if args.quick:
        base_train.update(epochs=args.epochs or 1, pseudo_queries_per_document=1)
    from softcar import TrainConfig

    softcar_epochs = TrainConfig(**base_train).epochs
    notes: list[str] = []
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads_per_job": threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_at_start": os.getloadavg(),
        },
        "config": {
            "softcar_train": TrainConfig(**base_train).model_dump(),
            "ft_lr": args.ft_lr,
            "quick": args.quick,
            "max_docs": max_docs,
            "jobs_in_subprocess": not IN_PROCESS,
        },
        "datasets": {},
        "notes": notes,
    }
    common = {"threads": threads, "max_docs": max_docs}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    previous: list[dict[str, Any]] = []
    sources = ([out_path] if args.resume and out_path.is_file() else []) + [
        Path(p) for p in (args.resume_from or "").split(",") if p]
    for source in sources:
        prev = json.loads(source.read_text())
        previous.append(prev)
        notes.append(f"resumed: results in {source.name} from `{prev.get('command')}` "
                     f"(started {prev.get('started')}) were reused, not re-run")
    report["resumed_from"] = [{k: p.get(k) for k in ("command", "started", "run_time_s")} for p in previous]

    def reuse(dataset: str, setting: str | None, method: str) -> dict[str, Any] | None:
        for prev in previous:
            entry = prev.get("datasets", {}).get(dataset, {})
            found = entry.get("baselines") if setting is None else entry.get("settings", {}).get(setting, {}).get(method)
            if found and "error" not in found:
                return found
        return None

    def checkpoint() -> None:
        """Partial results after every job, so an interrupted run still leaves numbers behind."""
        report["run_time_s"] = time.perf_counter() - started
        report["complete"] = False
        out_path.write_text(json.dumps(report, indent=2, default=str))

    for name in list(datasets):
        why = dataset_available(name)
        if why:
            notes.append(f"{name} skipped: {why}")
            log(f"skipping {name}: {why}")
            datasets.remove(name)

    ft_datasets = set(args.ft_datasets.split(",")) if args.ft_datasets else set(datasets)
    abl_datasets = set(args.ablations_datasets.split(",")) if args.ablations_datasets else set(datasets)

    if not args.tune_only:
        for dataset in datasets:
            info = load_dataset(dataset, max_docs)
            entry: dict[str, Any] = {
                "documents": len(info["corpus"]),
                "original_questions": len(info["original"][0]),
                "reworded_questions": len(info["reworded"][0]),
                "labelled_pairs_B": len(info["train_pairs"]),
                "settings": {},
            }
            report["datasets"][dataset] = entry
            log(f"{dataset}: baselines")
            old = reuse(dataset, None, "baselines")
            base = {"ok": True, "result": old} if old else run_in_subprocess("baselines", {**common, "dataset": dataset})
            entry["baselines"] = base.get("result") if base["ok"] else {"error": base["error"]}
            ft_epochs = args.ft_epochs if args.ft_epochs is not None else softcar_epochs
            if dataset not in abl_datasets:
                notes.append(f"{dataset}: no head-only / adapter-only ablations (--ablations-datasets), for time")
            if dataset not in ft_datasets:
                notes.append(f"{dataset}: no full fine-tuning reference (--ft-datasets), to keep the run within budget")
            if ft_epochs != softcar_epochs and dataset in ft_datasets:
                notes.append(f"{dataset}: full fine-tuning capped at {ft_epochs} epoch(s) (softcar: {softcar_epochs}) "
                             "to keep the run within budget")
            for setting in settings:
                results: dict[str, Any] = {}
                if base["ok"]:
                    for method in ("bm25", "inner_product"):
                        results[method] = base["result"][method]
                methods = ["softcar"] + (["head_only", "adapter_only"] if dataset in abl_datasets else [])
                methods += [m for m in SOFTCAR_METHODS if m not in methods and reuse(dataset, setting, m)]
                for method in methods:
                    old = reuse(dataset, setting, method)
                    if old:
                        log(f"{dataset} {setting}: {method} (reused)")
                        results[method] = old
                        continue
                    log(f"{dataset} {setting}: {method}")
                    out = run_in_subprocess("softcar", {
                        **common, "dataset": dataset, "setting": setting, "name": method,
                        "train": {**base_train, **SOFTCAR_METHODS[method]},
                        "latency": method == "softcar" and setting == settings[0] and not (args.quick or args.no_latency),
                    })
                    results[method] = out["result"] if out["ok"] else {"error": out["error"]}
                    results[method]["job_wall_s"] = out["wall_s"]
                    entry["settings"][setting] = results
                    checkpoint()
                old = reuse(dataset, setting, "full_ft")
                if old:
                    results["full_ft"] = old
                elif dataset in ft_datasets and setting in args.ft_settings.split(","):
                    log(f"{dataset} {setting}: full_ft ({ft_epochs} epochs)")
                    out = run_in_subprocess("full_ft", {
                        **common, "dataset": dataset, "setting": setting, "train": base_train,
                        "epochs": ft_epochs, "lr": args.ft_lr,
                    })
                    results["full_ft"] = out["result"] if out["ok"] else {"error": out["error"]}
                    results["full_ft"]["job_wall_s"] = out["wall_s"]
                    checkpoint()
                entry["settings"][setting] = results

    if not args.tune_only and args.micro_steps > 0:
        log("micro-benchmark: one training step")
        micro_spec = {**common, "dataset": "chatterbot_qa", "batch_size": TrainConfig(**base_train).batch_size,
                      "seq_len": 32, "steps": 3 if args.quick else args.micro_steps}
        micro = run_in_subprocess("micro", micro_spec)
        report["train_step_micro"] = micro["result"] if micro["ok"] else {"error": micro["error"]}

    if "softcar" not in (report.get("train_step_micro") or {}):
        for prev in previous:
            if "softcar" in (prev.get("train_step_micro") or {}):
                report["train_step_micro"] = prev["train_step_micro"]
                break

    if args.tune or args.tune_only:
        variants = QUICK_TUNING if args.quick else TUNING_VARIANTS
        tuning = []
        for setting in settings:
            for label, variant in variants.items():
                if setting not in variant.get("settings", [setting]):
                    continue
                train = {**base_train, **variant.get("train", {})}
                log(f"tuning chatterbot_qa {setting}: {label}")
                out = run_in_subprocess("softcar", {
                    **common, "dataset": "chatterbot_qa", "setting": setting, "name": label,
                    "adapter": variant.get("adapter", "linear"), "train": train,
                })
                row: dict[str, Any] = {"setting": setting, "variant": label, "train": train,
                                       "adapter": variant.get("adapter", "linear")}
                if out["ok"]:
                    res = out["result"]
                    row.update(metrics=res["metrics"], train_loop_s=res["train_loop_s"],
                               ms_per_example=res["ms_per_example"], trainable_params=res["trainable_params"])
                else:
                    row["error"] = out["error"]
                tuning.append(row)
                report["tuning"] = tuning
                checkpoint()
        report["tuning"] = tuning

    report["run_time_s"] = time.perf_counter() - started
    report["targets"] = targets(report)

    report["complete"] = True
    text = render(report)
    print("\n" + text)
    report["markdown"] = text
    out_path.write_text(json.dumps(report, indent=2, default=str))
    log(f"wrote {out_path}")
    return 0


def render(report: dict[str, Any]) -> str:
    """The Markdown tables of a results JSON."""
    from softcar.report import format_table

    tables: list[str] = []
    notes = report.get("notes", [])
    threads = report["machine"]["torch_threads_per_job"]
    for dataset, entry in report["datasets"].items():
        for setting, results in entry["settings"].items():
            for split in eval_splits(setting):
                rows = []
                for method, res in results.items():
                    if "metrics" in res and split in res["metrics"]:
                        rows.append(metric_row(method, res["metrics"][split], {
                            "trainable params": res.get("trainable_params", 0),
                            "train ms/example": res.get("ms_per_example") if res.get("ms_per_example") else "",
                            "train loop s": res.get("train_loop_s", ""),
                            "peak mem MiB": res.get("memory", {}).get("peak_delta_mib", ""),
                        }))
                    elif "error" in res:
                        rows.append({"method": method, "R@1": "error: " + res["error"][:60]})
                tables.append(f"### {dataset}, setting {setting}, {split_label(setting, split)} questions "
                              f"({entry['documents']} docs)\n\n" + format_table(rows))
    latency_rows = []
    for dataset, entry in report["datasets"].items():
        for setting, results in entry["settings"].items():
            lat = results.get("softcar", {}).get("latency")
            if lat:
                latency_rows.append({
                    "dataset": dataset, "setting": setting,
                    "softcar p50 ms": lat["softcar"]["p50_ms"], "softcar p95 ms": lat["softcar"]["p95_ms"],
                    "inner-product p50 ms": lat["inner_product"]["p50_ms"],
                    "inner-product p95 ms": lat["inner_product"]["p95_ms"],
                    "p50 ratio": lat["softcar"]["p50_ms"] / lat["inner_product"]["p50_ms"],
                    "p95 ratio": lat["softcar"]["p95_ms"] / lat["inner_product"]["p95_ms"],
                    "samples": lat["softcar"]["samples"],
                })
    if latency_rows:
        tables.append("### Query latency (single query, k=10, interleaved)\n\n" + format_table(latency_rows))
    micro = report.get("train_step_micro")
    if micro and "softcar" in micro:
        rows = [{"method": n, "median ms/step": micro[n]["median_ms"], "min ms/step": micro[n]["min_ms"],
                 "trainable params": micro[n]["trainable_params"],
                 "ratio softcar / this": micro["softcar"]["median_ms"] / micro[n]["median_ms"]}
                for n in ("softcar", "full_ft_same_loss", "full_ft_mnrl") if n in micro]
        tables.append(f"### One training step (batch {micro['batch_size']}, {micro['seq_len']} tokens, "
                      f"forward+backward+AdamW, median of {micro['softcar']['steps']})\n\n" + format_table(rows))
    if report.get("tuning"):
        rows = []
        for row in report["tuning"]:
            if "metrics" not in row:
                rows.append({"setting": row["setting"], "variant": row["variant"], "R@1": "error"})
                continue
            r: dict[str, Any] = {"setting": row["setting"], "variant": row["variant"]}
            for split, m in row["metrics"].items():
                r[f"{split} R@1"] = m["R@1"]
                r[f"{split} MRR@10"] = m["MRR@10"]
            r["train loop s"] = row["train_loop_s"]
            rows.append(r)
        tables.append("### Tuning: softcar TrainConfig variants on chatterbot_qa\n\n" + format_table(rows))
    target_rows = [{"target": t["name"], "value": t["value"], "threshold": t["threshold"],
                    "met": "yes" if t["met"] else "no"} for t in report["targets"]]
    if target_rows:
        tables.append("### Targets\n\n" + format_table(target_rows))
    if notes:
        tables.append("Notes:\n" + "\n".join(f"- {n}" for n in notes))
    tables.append(f"Run time: {report['run_time_s']:.0f} s; command: `{report['command']}`; "
                  f"{report['machine']['cpu_count']} CPUs, torch {report['machine']['torch']}, "
                  f"{threads} torch threads per job.")
    return "\n\n".join(tables)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for dataset, entry in report["datasets"].items():
        settings = entry["settings"]
        a = settings.get("A", {})
        if "metrics" in a.get("softcar", {}) and "metrics" in a.get("inner_product", {}):
            for split in ("original", "reworded"):
                gain = a["softcar"]["metrics"][split]["R@1"] - a["inner_product"]["metrics"][split]["R@1"]
                out.append({"name": f"A {dataset} ({split}): softcar R@1 - inner-product R@1",
                            "value": gain, "threshold": f">= +{TARGETS['A_recall1_gain']}",
                            "met": gain >= TARGETS["A_recall1_gain"]})
        b = settings.get("B", {})
        if "metrics" in b.get("softcar", {}):
            value = b["softcar"]["metrics"]["reworded"]["R@1"]
            out.append({"name": f"B {dataset} (reworded): softcar R@1", "value": value,
                        "threshold": f">= {TARGETS['B_recall1']}", "met": value >= TARGETS["B_recall1"]})
        for setting, results in settings.items():
            lat = results.get("softcar", {}).get("latency")
            if lat:
                for p in ("p50", "p95"):
                    ratio = lat["softcar"][f"{p}_ms"] / lat["inner_product"][f"{p}_ms"]
                    out.append({"name": f"latency {dataset}: softcar / inner-product {p}", "value": ratio,
                                "threshold": f"<= {TARGETS['latency_ratio']}", "met": ratio <= TARGETS["latency_ratio"]})
        for setting, results in settings.items():
            sc, ft = results.get("softcar", {}), results.get("full_ft", {})
            if sc.get("ms_per_example") and ft.get("ms_per_example"):
                ratio = sc["ms_per_example"] / ft["ms_per_example"]
                out.append({"name": f"train time per example {dataset} {setting}: softcar / full FT (MNRL, own loop)",
                            "value": ratio, "threshold": f"<= {TARGETS['step_time_ratio']}",
                            "met": ratio <= TARGETS["step_time_ratio"]})
    micro = report.get("train_step_micro") or {}
    if "ratio_softcar_vs_full_same_loss" in micro:
        ratio = micro["ratio_softcar_vs_full_same_loss"]
        out.append({"name": "training step: softcar / full fine-tuning (same model, same loss, same batch)",
                    "value": ratio, "threshold": f"<= {TARGETS['step_time_ratio']}",
                    "met": ratio <= TARGETS["step_time_ratio"]})
    if "ratio_softcar_vs_full_mnrl" in micro:
        ratio = micro["ratio_softcar_vs_full_mnrl"]
        out.append({"name": "training step: softcar / full fine-tuning with sentence-transformers MNRL (the issue's reference)",
                    "value": ratio, "threshold": f"<= {TARGETS['step_time_ratio']}",
                    "met": ratio <= TARGETS["step_time_ratio"]})
    return out


if __name__ == "__main__":
    sys.exit(main())
