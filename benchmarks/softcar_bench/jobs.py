"""Benchmark jobs and how they run: each job is a picklable dataclass whose ``run()`` returns
a JSON-able dict; :class:`JobRunner` runs it in a fresh ``spawn`` process (clean per-job peak
memory) or in this one.

All training goes through :class:`softcar.Trainer`: softcar's own (``fit``, timed by trainer
callbacks on ``ClassifierRetriever.callbacks``), the full fine-tuning reference
(:mod:`.fullft`) and the one-step micro-benchmark.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

from .datasets import BenchDataset, eval_splits, load_dataset
from .measure import PeakMemory, interleaved_latency, training_callbacks, training_figures


class Job(Protocol):
    threads: int

    def run(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...


def setup_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    for name in ("sentence_transformers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def evaluate_splits(retriever: Any, data: BenchDataset, splits: list[str]) -> dict[str, dict[str, float]]:
    from softcar import evaluate

    return {split: evaluate(retriever, *data.split(split)) for split in splits}


def train_config(overrides: dict[str, Any]) -> Any:
    from softcar import TrainConfig

    return TrainConfig(**{"show_progress": False, **overrides})


# --------------------------------------------------------------------------- jobs
@dataclass
class BaselinesJob:
    """BM25 and frozen inner-product search: index, evaluate on both question splits."""

    dataset: str
    threads: int = 1
    max_docs: int | None = None

    def describe(self) -> str:
        return f"baselines {self.dataset}"

    def run(self) -> dict[str, Any]:
        setup_worker(self.threads)
        from softcar import BM25Retriever, InnerProductRetriever

        data = load_dataset(self.dataset, self.max_docs)
        out: dict[str, Any] = {}
        for name, make in (("bm25", BM25Retriever), ("inner_product", InnerProductRetriever)):
            start = time.perf_counter()
            retriever = make().fit(data.corpus)
            out[name] = {
                "index_s": time.perf_counter() - start,
                "metrics": evaluate_splits(retriever, data, ["original", "reworded"]),
                "trainable_params": 0,
            }
        return out


@dataclass
class SoftcarJob:
    """Fit one ``ClassifierRetriever`` variant; time its training loop, measure memory, evaluate."""

    dataset: str
    setting: str
    name: str
    train: dict[str, Any] = field(default_factory=dict)
    adapter: str = "linear"
    latency: bool = False
    latency_queries: int = 200
    latency_rounds: int = 3
    threads: int = 1
    max_docs: int | None = None

    def describe(self) -> str:
        return f"{self.name} {self.dataset} {self.setting}"

    def run(self) -> dict[str, Any]:
        setup_worker(self.threads)
        from softcar import ClassifierRetriever, InnerProductRetriever

        data = load_dataset(self.dataset, self.max_docs)
        config = train_config(self.train)
        retriever = ClassifierRetriever(adapter=self.adapter, config=config)  # type: ignore[arg-type]
        clock, steps = training_callbacks()
        retriever.callbacks.extend([clock, steps])
        pairs = data.train_pairs if self.setting == "B" else None
        with PeakMemory() as memory:
            start = time.perf_counter()
            retriever.fit(data.corpus, pairs)
            fit_s = time.perf_counter() - start

        model = retriever.model
        parts = [p for p, on in (("adapter", config.train_adapter), ("head", config.train_head)) if on]
        result: dict[str, Any] = {
            "fit_s": fit_s,
            **training_figures(clock, steps),
            "memory": memory.result(),
            "trainable_params": sum(p.numel() for p in model.trainable_parameters(parts).values()),
            "adapter_params": sum(p.numel() for p in model.adapter.parameters()),
            "head_params": model.head.weight.numel(),
            "metrics": evaluate_splits(retriever, data, eval_splits(self.setting)),
        }
        if self.latency:
            frozen = InnerProductRetriever().fit(data.corpus)
            queries = list(data.original[0].values())[: self.latency_queries]
            result["latency"] = interleaved_latency(
                {"softcar": retriever, "inner_product": frozen}, queries, self.latency_rounds
            )
        return result


@dataclass
class MicroJob:
    """One training step (forward + backward + AdamW) on one fixed batch, per method.

    ``softcar``: adapter + head trainable, frozen encoder; ``full_ft_same_loss``: the same
    model and ``ClassificationLoss`` with every encoder weight trainable too; ``full_ft_mnrl``
    (context): a sentence-transformers MNRL step, queries and documents padded to the same
    length. Each method has its own ``softcar.Trainer``; steps are ``trainer.train_step(batch)``
    timed by ``StepTimer``, alternating between methods; medians reported.
    """

    dataset: str = "chatterbot_qa"
    batch_size: int = 32
    seq_len: int = 32
    steps: int = 16
    mnrl: bool = True
    threads: int = 1
    max_docs: int | None = None

    def describe(self) -> str:
        return f"one-step micro-benchmark ({self.steps} steps)"

    def run(self) -> dict[str, Any]:
        setup_worker(self.threads)
        import torch

        from softcar import ClassificationLoss, ClassifierRetriever, StepTimer, Trainer

        data = load_dataset(self.dataset, self.max_docs)
        retriever = ClassifierRetriever(config=train_config({"epochs": 0})).fit(data.corpus)
        sample = random.Random(0).sample(retriever.training_examples(), self.batch_size)
        texts = [text for text, _ in sample]
        batch = dict(
            retriever.tokenizer(
                texts, padding="max_length", truncation=True, max_length=self.seq_len, return_tensors="pt"
            )
        )
        batch = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": torch.tensor([row for _, row in sample]),
        }
        model = retriever.model
        light = list(model.adapter.parameters()) + [model.head.weight]
        method_params = {"softcar": light, "full_ft_same_loss": light + list(model.encoder.model.parameters())}

        trainers: dict[str, Any] = {}
        batches: dict[str, Any] = {}
        prepare: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for name, params in method_params.items():
            # tiny lr: the shared model barely moves between the alternating methods
            trainers[name] = Trainer(
                model, torch.optim.AdamW(params, lr=1e-6), ClassificationLoss(20.0), callbacks=[StepTimer()]
            )
            batches[name] = batch
            prepare[name] = _trainable_only(model, params)
            counts[name] = sum(p.numel() for p in params)
        if self.mnrl:
            from .fullft import MnrlLoss, load_sentence_transformer

            st = load_sentence_transformer()
            st.max_seq_length = self.seq_len

            def fixed(batch_texts: list[str]) -> dict[str, Any]:
                return dict(
                    st.tokenizer(
                        batch_texts, padding="max_length", truncation=True, max_length=self.seq_len, return_tensors="pt"
                    )
                )

            documents = retriever.documents
            trainers["full_ft_mnrl"] = Trainer(
                st, torch.optim.AdamW(st.parameters(), lr=1e-6), MnrlLoss(st), callbacks=[StepTimer()]
            )
            doc_texts = [documents[row].text for _, row in sample]
            batches["full_ft_mnrl"] = {"queries": fixed(texts), "documents": fixed(doc_texts)}
            prepare["full_ft_mnrl"] = _trainable_only(st, list(st.parameters()))
            counts["full_ft_mnrl"] = sum(p.numel() for p in st.parameters())

        names = list(trainers)
        for name in names:  # warm-up, not counted
            prepare[name]()
            trainers[name].train_step(batches[name])
            trainers[name].callbacks[0].seconds.clear()
        for i in range(self.steps):
            for name in names if i % 2 == 0 else names[::-1]:
                prepare[name]()
                trainers[name].train_step(batches[name])
        out: dict[str, Any] = {}
        for name in names:
            ms = [1000 * s for s in trainers[name].callbacks[0].seconds]
            out[name] = {
                "median_ms": statistics.median(ms),
                "min_ms": min(ms),
                "steps": len(ms),
                "trainable_params": counts[name],
            }
        out["batch_size"], out["seq_len"] = self.batch_size, self.seq_len
        out["ratio_softcar_vs_full_same_loss"] = out["softcar"]["median_ms"] / out["full_ft_same_loss"]["median_ms"]
        if "full_ft_mnrl" in out:
            out["ratio_softcar_vs_full_mnrl"] = out["softcar"]["median_ms"] / out["full_ft_mnrl"]["median_ms"]
        return out


def _trainable_only(model: Any, params: list[Any]) -> Any:
    """Before a step of one method: train mode, and gradients only for that method's parameters."""

    def prepare() -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.train()

    return prepare


# --------------------------------------------------------------------------- running
def _run_job(job: Job) -> dict[str, Any]:
    try:
        return {"ok": True, "result": job.run()}
    except Exception as exc:  # reported; the benchmark goes on
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


@dataclass
class JobRunner:
    """Runs jobs in a fresh ``spawn`` process each (default) or in this process.

    ``in_process``: faster to start, but memory figures are less clean (allocator reuse).
    ``dry_run``: run nothing (``--no-run``: a report assembled from earlier results).
    """

    in_process: bool = False
    dry_run: bool = False

    def run(self, job: Job) -> dict[str, Any]:
        start = time.perf_counter()
        if self.dry_run:
            return {"ok": False, "error": "not run (--no-run: assembled from earlier results)", "wall_s": 0.0}
        if self.in_process:
            out = _run_job(job)
        else:
            with mp.get_context("spawn").Pool(1) as pool:
                out = pool.apply(_run_job, (job,))
        out["wall_s"] = time.perf_counter() - start
        if not out["ok"]:
            print(f"  !! {job.describe()} failed: {out['error']}\n{out['traceback']}", file=sys.stderr)
        return out
