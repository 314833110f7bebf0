"""Scale benchmark (issue #8, training side): step time against head rows, and fits on real subsets.

``python -m benchmarks.softcar_bench.scale steps``: one training step (batch 32 short questions,
the debian-packages synopses) with the head padded by *synthetic random unit rows* to 1k / 57k /
300k / 1M rows (cost only: the padded rows are not documents), dense (exact softmax, AdamW
over the whole head) against the sampled softmax with sparse row updates, plus ablation rows.

``python -m benchmarks.softcar_bench.scale fit --sizes 1000,10000``: ``ClassifierRetriever.fit``
with default settings on random subsets of ../shared/data/debian-packages (no labelled
queries: the package synopses are only the evaluation queries), with fit wall time (including
document encoding), mean step time, peak RSS, and R@1 on the synopsis queries next to frozen
inner-product search and BM25 on the same subset. ``--compare-exact`` also fits with the
exact softmax and with the sampled softmax forced, to choose ``sampled_softmax_above``.

Both print a table and write JSON under benchmarks/results/ with the load average: the
machine (2 CPU cores) is shared with other work, so absolute times are noisy; ratios within
one run are what the targets are about.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from benchmarks.softcar_bench.measure import PeakMemory
from softcar import (
    BM25Retriever,
    ClassifierRetriever,
    Document,
    ExactMiner,
    IndexMiner,
    InnerProductRetriever,
    ScoringConfig,
    StepTimer,
    TrainConfig,
    Trainer,
    TrainerCallback,
    evaluate,
    format_table,
    load_beir,
    write_json,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "debian-packages"
RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("scale")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment(threads: int) -> dict[str, Any]:
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.softcar_bench.scale " + " ".join(sys.argv[1:]),
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_start": load_average(),
        "note": "2-core machine shared with other developers' work; absolute times are noisy",
    }


def subset(
    data_path: Path, size: int | None, seed: int = 0
) -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]]]:
    """``size`` random documents with their synopsis queries (all when ``size`` is None)."""
    data = load_beir(data_path, duplicate_ids="keep_first")
    qrels = {q: d for split in data.qrels.values() for q, d in split.items()}
    docs = (
        list(data.corpus) if size is None or size >= len(data.corpus) else random.Random(seed).sample(data.corpus, size)
    )
    ids = {d.id for d in docs}
    judged = {q: d for q, d in qrels.items() if q in data.queries and set(d) & ids}
    return docs, {q: data.queries[q] for q in judged}, judged


# --------------------------------------------------------------------------- step time
class CpuStepTimer(TrainerCallback):
    """CPU seconds of this process per step (``time.process_time`` between step ends).

    On a machine shared with other work, wall time per step mostly measures the queue for the
    cores; the CPU time the step itself consumed is the stable measure of its cost.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = 0.0

    def on_train_begin(self, trainer: Trainer, total_steps: int) -> None:
        self._last = time.process_time()

    def on_step_end(self, trainer: Trainer, loss: float, batch_size: int, seconds: float) -> None:
        now = time.process_time()
        self.seconds.append(now - self._last)
        self._last = now


def step_times(args: argparse.Namespace) -> dict[str, Any]:
    docs, queries, qrels = subset(Path(args.data), 1000, args.seed)
    base = TrainConfig(epochs=0, show_progress=False, batch_size=32)
    # Cost only: every head row is a random unit row (no document is encoded); the batches are
    # real short questions (package synopses) labelled with rows among the first 1,000.
    retriever = ClassifierRetriever(config=base)
    row_of = {d.id: i for i, d in enumerate(docs)}
    examples = [(queries[q], row_of[next(iter(d))]) for q, d in qrels.items()]
    dim = retriever.model.encoder.dim
    rows: list[dict[str, Any]] = []
    variants: list[tuple[str, bool, dict[str, Any]]] = [
        ("dense: exact softmax + AdamW over the whole head", False, {}),
        ("sampled: hard + in-batch + uniform, sparse rows", True, {}),
        ("sampled, no hard negatives", True, {"sampled_hard_negatives": 0}),
        ("sampled, hard negatives exact over all rows", True, {"hard_negative_exact_max": 10**9}),
        ("sampled, hard negatives exact in a uniform pool (before IndexMiner)", True, {"_pool_miner": True}),
    ]
    for size in args.rows:
        retriever.model.head.weight = torch.nn.Parameter(torch.zeros(size, dim), requires_grad=False)
        for name, sampled, overrides in variants:
            if ("exact over all rows" in name or "uniform pool" in name) and size <= base.hard_negative_exact_max:
                continue  # the same as the default sampled row there
            if not sampled and size > args.dense_max_rows:
                continue
            with torch.no_grad():  # every variant starts from the same head (regenerated: no spare copy at 1M rows)
                generator = torch.Generator().manual_seed(args.seed)
                head = retriever.model.head.weight
                head.copy_(F.normalize(torch.randn(size, dim, generator=generator), dim=1))
            pool_miner = bool(overrides.get("_pool_miner", False))
            config = base.model_copy(update={k: v for k, v in overrides.items() if not k.startswith("_")})
            retriever.hard_negative_miner = ExactMiner(max_rows=config.hard_negative_exact_max) if pool_miner else None
            with PeakMemory() as memory:
                setup = retriever.training_setup(examples, config, sampled=sampled)
                timer, cpu = StepTimer(), CpuStepTimer()
                trainer = Trainer(
                    setup.model, setup.optimizer, setup.loss, regularizers=setup.regularizers, callbacks=[timer, cpu]
                )
                trainer.train(setup.loader, 1, max_steps=args.warmup + args.steps)
            timed = timer.seconds[args.warmup :]
            miner = getattr(setup.loss, "miner", None)
            # An IndexMiner builds its index on the first (untimed) step and every refresh_every
            # steps after: its build is charged to the steps it serves.
            # (no index when the variant mines no hard negatives)
            index = miner.index if isinstance(miner, IndexMiner) else None
            rebuild = index.build_seconds / miner.refresh_every if index is not None else 0.0
            row = {
                "head_rows": size,
                "variant": name,
                "sampled": sampled,
                "step_cpu_s_median": statistics.median(cpu.seconds[args.warmup :]) + rebuild,
                "step_s_median": statistics.median(timed) + rebuild,
                "index_rebuild_s_per_step": rebuild,
                "miner": type(miner).__name__ if miner is not None else None,
                "step_s_all": timer.seconds,
                "step_cpu_s_all": cpu.seconds,
                **memory.result(),
                "load_average": load_average(),
            }
            rows.append(row)
            logger.info(
                "%s rows, %s: %.3f s/step wall, %.3f s CPU", size, name, row["step_s_median"], row["step_cpu_s_median"]
            )
            del setup, trainer
            if args.partial_out:
                write_json(args.partial_out, {"rows": rows, "incomplete": True})
    smallest = min(args.rows)
    for key in ("step_cpu_s_median", "step_s_median"):
        by_variant: dict[str, dict[int, float]] = {}
        for row in rows:
            by_variant.setdefault(row["variant"], {})[row["head_rows"]] = row[key]
        suffix = "" if key == "step_cpu_s_median" else "_wall"
        for row in rows:
            reference = by_variant[row["variant"]].get(smallest)
            row[f"vs_same_variant_at_smallest{suffix}"] = row[key] / reference if reference else None
            dense = by_variant[variants[0][0]].get(row["head_rows"])
            row[f"speedup_vs_dense{suffix}"] = dense / row[key] if dense else None
    return {"rows": rows, "synthetic_rows": "every head row is a random unit vector (cost only, no documents)"}


def print_steps(result: dict[str, Any]) -> None:
    table = [
        {
            "head rows": f"{r['head_rows']:,}",
            "variant": r["variant"],
            "miner": r.get("miner") or "",
            "step CPU s": f"{r['step_cpu_s_median']:.3f}",
            "step wall s": f"{r['step_s_median']:.3f}",
            "vs smallest head": f"{r['vs_same_variant_at_smallest']:.2f}x" if r["vs_same_variant_at_smallest"] else "",
            "speed-up vs dense": f"{r['speedup_vs_dense']:.1f}x" if r["speedup_vs_dense"] else "",
            "peak +MiB": f"{r['peak_delta_mib']:.0f}",
        }
        for r in result["rows"]
    ]
    print(format_table(table))


# --------------------------------------------------------------------------- fits
def peak_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class InitialRows(TrainerCallback):
    """The head rows when training begins: with no labelled queries, the frozen document embeddings."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None

    def on_train_begin(self, trainer: Trainer, total_steps: int) -> None:
        if self.rows is None:
            self.rows = trainer.model.head.weight.detach().clone().cpu()


def frozen_from_rows(docs: list[Document], rows: torch.Tensor, ann_threshold: int | None = None) -> ClassifierRetriever:
    """Frozen inner-product search over ``rows`` (identity adapter, no fusion, no question rows):
    equal to ``InnerProductRetriever.fit(docs)`` (tests/test_retriever.py) without re-encoding."""
    config = TrainConfig(epochs=0, show_progress=False)
    scoring = ScoringConfig(hybrid_weight=0.0, question_rows=False, **_ann(ann_threshold))
    frozen = ClassifierRetriever(config=config, scoring=scoring)
    frozen.add_embedded_documents(docs, rows)
    return frozen


def one_fit(
    name: str,
    make: Any,
    docs: list[Document],
    queries: dict[str, str],
    qrels: Any,
    initial_rows: InitialRows | None = None,
    fitted: bool = False,
) -> dict[str, Any]:
    """Fit ``make()`` on ``docs`` and evaluate it (``fitted``: ``make`` returns it ready, no fit)."""
    retriever = make()
    timer = StepTimer()
    if isinstance(retriever, ClassifierRetriever):
        retriever.callbacks.append(timer)
        if initial_rows is not None:
            retriever.callbacks.append(initial_rows)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started, cpu_started = time.perf_counter(), time.process_time()
    with PeakMemory() as memory:
        if not fitted:
            retriever.fit(docs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    quality = evaluate(retriever, queries, qrels, k=10)
    row: dict[str, Any] = {
        "method": name,
        "documents": len(docs),
        "fit_s": wall,
        "fit_cpu_s": cpu,
        "steps": len(timer.seconds),
        "examples": timer.examples,
        "step_s_mean": statistics.fmean(timer.seconds) if timer.seconds else None,
        "step_s_median": statistics.median(timer.seconds) if timer.seconds else None,
        "train_steps_s": sum(timer.seconds),
        "peak_rss_mib_process": round(peak_rss_mib(), 1),
        **memory.result(),
        **quality,
        "eval_queries": len(queries),
        "load_average": load_average(),
    }
    if torch.cuda.is_available():
        row["cuda_peak_fit_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if isinstance(retriever, ClassifierRetriever):
        row["sampled_softmax"] = retriever.uses_sampled_softmax()
    logger.info("%s on %d docs: fit %.0f s, R@1 %.3f", name, len(docs), wall, quality["R@1"])
    del retriever
    return row


def _ann(threshold: int | None) -> dict[str, int]:
    return {} if threshold is None else {"ann_threshold": threshold}


def _softcar(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    config = TrainConfig(show_progress=args.progress).model_copy(update=overrides)
    scoring = ScoringConfig(**_ann(args.ann_threshold))
    return lambda: ClassifierRetriever(config=config, scoring=scoring)


def fits(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for size in args.sizes:
        docs, queries, qrels = subset(Path(args.data), size, args.seed)
        if args.eval_queries and len(queries) > args.eval_queries:
            keep = random.Random(args.seed).sample(sorted(queries), args.eval_queries)
            queries = {q: queries[q] for q in keep}
        methods: list[tuple[str, Any]] = [("softcar (defaults)", _softcar(args, {}))]
        if args.compare_exact:
            # The variant the defaults do not use at this size (the defaults are the other one).
            threshold = TrainConfig().sampled_softmax_above
            if threshold is not None and len(docs) > threshold:
                methods.append(("softcar, exact softmax", _softcar(args, {"sampled_softmax_above": None})))
            else:
                methods.append(("softcar, sampled softmax", _softcar(args, {"sampled_softmax_above": 1})))
        initial_rows = InitialRows() if args.ip_from_softcar_rows else None
        if "ip" in args.baselines and initial_rows is None:
            methods.append(("frozen inner product", InnerProductRetriever))
        if "bm25" in args.baselines:
            methods.append(("BM25", BM25Retriever))
        for name, make in methods:
            if args.methods and not any(m in name for m in args.methods.split(",")):
                continue
            snapshot = initial_rows if name == "softcar (defaults)" else None
            rows.append(one_fit(name, make, docs, queries, qrels, snapshot))
            if initial_rows is not None and initial_rows.rows is not None and "ip" in args.baselines:
                frozen_rows, initial_rows.rows = initial_rows.rows, None
                row = one_fit(
                    "frozen inner product (softcar's encoding pass)",
                    lambda docs=docs, rows=frozen_rows: frozen_from_rows(docs, rows, args.ann_threshold),
                    docs,
                    queries,
                    qrels,
                    fitted=True,
                )
                row["note"] = "fit_s excludes encoding: the rows are the frozen embeddings softcar's fit computed"
                rows.append(row)
            if args.partial_out:
                write_json(args.partial_out, {"rows": rows, "incomplete": True})
    return {"rows": rows, "data": str(args.data), "defaults": TrainConfig().model_dump(mode="json")}


def print_fits(result: dict[str, Any]) -> None:
    table = [
        {
            "docs": f"{r['documents']:,}",
            "method": r["method"],
            "fit s": f"{r['fit_s']:.0f}",
            "fit CPU s": f"{r['fit_cpu_s']:.0f}",
            "step s": f"{r['step_s_mean']:.3f}" if r["step_s_mean"] else "",
            "steps": str(r["steps"]) if r["steps"] else "",
            "peak RSS MiB": f"{r['peak_rss_mib_process']:.0f}",
            "R@1": f"{r['R@1']:.3f}",
            "R@10": f"{r['R@10']:.3f}",
        }
        for r in result["rows"]
    ]
    print(format_table(table))


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "").replace(",", "")) for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.softcar_bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("part", choices=["steps", "fit"])
    parser.add_argument("--data", default=str(DATA), help="BEIR folder of debian-packages")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (on an oversubscribed machine 1 is faster)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=_ints, default=[1000, 57000, 300000, 1000000], help="steps: head sizes")
    parser.add_argument("--steps", type=int, default=5, help="steps: timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="steps: untimed steps first")
    parser.add_argument("--dense-max-rows", type=int, default=1_000_000, help="steps: skip dense above this")
    parser.add_argument("--sizes", type=_ints, default=[1000, 10000], help="fit: subset sizes")
    parser.add_argument("--eval-queries", type=int, default=5000, help="fit: random judged queries evaluated (0: all)")
    parser.add_argument("--compare-exact", action="store_true", help="fit: also exact and forced-sampled softcar")
    parser.add_argument("--baselines", default="ip,bm25", help="fit: comma list of ip, bm25 (empty: none)")
    parser.add_argument(
        "--ip-from-softcar-rows",
        action="store_true",
        help="fit: frozen inner product over the frozen rows softcar's fit encoded (no second encoding pass)",
    )
    parser.add_argument("--progress", action="store_true", help="fit: progress bars (with ETA)")
    parser.add_argument(
        "--ann-threshold",
        type=int,
        default=None,
        help="fit: ScoringConfig.ann_threshold (default: the library's); above the corpus size, exact search",
    )
    parser.add_argument("--methods", default="", help="fit: only methods whose name contains one of these (comma list)")
    parser.add_argument("--partial-out", default=None, help="fit: JSON rewritten after every method")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/scale-<part>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = environment(args.threads)
    started = time.perf_counter()
    result = step_times(args) if args.part == "steps" else fits(args)
    report.update(result, wall_s=time.perf_counter() - started, load_average_end=load_average())
    (print_steps if args.part == "steps" else print_fits)(result)
    out = Path(args.out) if args.out else RESULTS / f"scale-{args.part}.json"
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
