"""Transfer setting T of issue #7: feedback for some documents, questions about the others.

A seeded random share (0 %, 10 %, 50 %, 90 %) of the documents is *labelled*: its questions are
training pairs. R@1 is measured on the questions of the other documents, which never got
feedback, exactly the deployment situation where partial feedback used to make softcar worse
than the frozen search it replaces.

Datasets: ``debian`` (the first ``--docs`` documents of ../shared/data/debian-packages;
package synopsis → long description) and ``chatterbot`` (the packaged chatterbot_qa; labelled
with the original questions, tested on the reworded question of each unlabelled document).

Rows: BM25, frozen inner product, softcar with the previous release's defaults (no held-out
pairs: calibrated on the pairs it was trained on), softcar with the new defaults, and ablations.
``− BM25 fusion`` and ``− question rows`` re-calibrate the same fitted model without that
component (``ClassifierRetriever.rescore``); ``− training`` is ``epochs=0``; ``head only`` does not
train the adapter. Prints a table and writes ``benchmarks/results/transfer-<dataset>.json``.

    python -m benchmarks.softcar_bench.transfer --dataset debian --docs 400 --epochs 1 --fractions 0.5,0.1,0.9,0
    python -m benchmarks.softcar_bench.transfer --dataset chatterbot --fractions 0.5 --rows new \
        --options "label_smoothing=0.1;hard_negatives=16;margin_weight=1;token_dropout=0.1,word_swap=0.1"

``--encoder DIR`` runs every encoder row on another local Hugging Face model.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.softcar_bench.datasets import FAQ_PATH
from softcar import (
    BM25Retriever,
    ClassifierRetriever,
    Document,
    InnerProductRetriever,
    Retriever,
    ScoringConfig,
    TrainConfig,
    evaluate,
    format_table,
    load_beir,
    packaged_dataset_path,
    query_latency,
    write_json,
)

DEBIAN = FAQ_PATH.parent / "debian-packages"
RESULTS = Path(__file__).resolve().parent.parent / "results"
COLUMNS = ["labelled", "retriever", "R@1", "MRR@10", "vs IP", "p50 ms", "fit s", "α", "b", "kept"]

Questions = list[tuple[str, str]]
"""``(question, doc_id)``"""


def load(dataset: str, docs: int) -> tuple[list[Document], Questions, Questions]:
    """``(corpus, labelled-side questions, test-side questions)``, both keyed by document."""
    if dataset == "debian":
        ds = load_beir(DEBIAN, duplicate_ids="keep_first")
        corpus = ds.corpus[:docs]
        keep = {d.id for d in corpus}
        pairs = [(t, d) for t, d in ds.training_pairs("test") if d in keep]
        return corpus, pairs, pairs
    if dataset == "chatterbot":
        ds = load_beir(packaged_dataset_path("chatterbot_qa"))
        return ds.corpus, ds.training_pairs("train"), ds.training_pairs("test")
    raise SystemExit(f"unknown dataset {dataset!r} (debian, chatterbot)")


def split(corpus: list[Document], labelled_side: Questions, test_side: Questions, fraction: float, seed: int) -> Any:
    """Labelled pairs of a random ``fraction`` of the documents, and the test split of the rest."""
    ids = [d.id for d in corpus]
    random.Random(seed).shuffle(ids)
    labelled = set(ids[: round(len(ids) * fraction)])
    pairs = [(t, d) for t, d in labelled_side if d in labelled]
    test = [(t, d) for t, d in test_side if d not in labelled]
    queries = {f"q{i}": t for i, (t, _) in enumerate(test)}
    qrels = {f"q{i}": {d: 1} for i, (_, d) in enumerate(test)}
    return pairs, queries, qrels


def measure(
    name: str, retriever: Retriever, fit_s: float, queries: dict[str, str], qrels: dict[str, dict[str, int]]
) -> dict[str, Any]:
    metrics = evaluate(retriever, queries, qrels)
    latency = query_latency(retriever, list(queries.values())[:40])
    calibration = getattr(retriever, "calibration", None)
    return {
        "retriever": name,
        "R@1": metrics["R@1"],
        "MRR@10": metrics["MRR@10"],
        "p50 ms": latency["p50_ms"],
        "fit s": fit_s,
        "α": "" if calibration is None else calibration.hybrid_weight,
        "b": "" if calibration is None else str(calibration.question_offset),
        "kept": str(getattr(retriever, "training_kept", "")),
        "test questions": len(queries),
    }


def timed_fit(build: Callable[[], Any], corpus: list[Document], pairs: Questions) -> tuple[Any, float]:
    start = time.perf_counter()
    retriever = build().fit(corpus, queries=pairs or None)
    return retriever, time.perf_counter() - start


def parse_options(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``'a=0.1,b=true'`` → (``TrainConfig`` updates, ``ScoringConfig`` settings), each key
    validated by the config that has it."""
    train: dict[str, Any] = {}
    scoring: dict[str, Any] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        target = scoring if key in ScoringConfig.model_fields else train
        target[key] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    train_update = TrainConfig(**train).model_dump(include=set(train))
    return train_update, ScoringConfig(**scoring).model_dump(include=set(scoring))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="debian", choices=["debian", "chatterbot"])
    parser.add_argument("--docs", type=int, default=600, help="debian: first N documents")
    parser.add_argument("--fractions", default="0,0.1,0.5,0.9")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rows",
        default="before,new,untrained,ablations",
        help="comma-separated: before, new, untrained, ablations (rescored new), head-only",
    )
    parser.add_argument(
        "--options",
        default="",
        help="extra rows: ';'-separated TrainConfig / ScoringConfig updates on the new defaults, each "
        "'key=value[,key=value]', e.g. 'label_smoothing=0.1;token_dropout=0.1,word_swap=0.1;"
        "calibration_standard_errors=1'",
    )
    parser.add_argument(
        "--encoder", default=None, help="local Hugging Face model directory (default: softcar's MiniLM)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("softcar.retriever").setLevel(logging.INFO)
    out = args.out or RESULTS / f"transfer-{args.dataset}.json"
    wanted = set(args.rows.split(","))
    started = time.perf_counter()
    corpus, labelled_side, test_side = load(args.dataset, args.docs)
    train = TrainConfig(epochs=args.epochs, show_progress=False)
    classifier = partial(ClassifierRetriever, args.encoder)
    baselines: dict[str, tuple[Any, float]] = {
        "BM25": timed_fit(BM25Retriever, corpus, []),
        "frozen inner product": timed_fit(lambda: InnerProductRetriever(args.encoder, show_progress=False), corpus, []),
    }
    rows: list[dict[str, Any]] = []
    for fraction in [float(f) for f in args.fractions.split(",")]:
        pairs, queries, qrels = split(corpus, labelled_side, test_side, fraction, args.seed)
        block = [measure(name, r, s, queries, qrels) for name, (r, s) in baselines.items()]
        variants: dict[str, Callable[[], ClassifierRetriever]] = {}
        if "before" in wanted and pairs:
            variants["softcar before (main defaults)"] = lambda: classifier(
                config=train.model_copy(update={"holdout_fraction": 0.0})
            )
        if "new" in wanted:
            variants["softcar new defaults"] = lambda: classifier(config=train)
        if "untrained" in wanted:
            variants["  − training (epochs=0)"] = lambda: classifier(config=train.model_copy(update={"epochs": 0}))
        if "head-only" in wanted:
            variants["  − adapter training (head only)"] = lambda: classifier(
                config=train.model_copy(update={"train_adapter": False})
            )
        for option in filter(None, args.options.split(";")):
            update, scoring_update = parse_options(option)
            variants[f"  + {option}"] = lambda update=update, scoring_update=scoring_update: classifier(
                config=train.model_copy(update=update), scoring=ScoringConfig(**scoring_update)
            )
        for name, build in variants.items():
            retriever, fit_s = timed_fit(build, corpus, pairs)
            block.append(measure(name, retriever, fit_s, queries, qrels))
            if name == "softcar new defaults" and "ablations" in wanted:
                for label, scoring in (
                    ("  − BM25 fusion (rescored)", ScoringConfig(hybrid_weight=0.0)),
                    ("  − question rows (rescored)", ScoringConfig(question_rows=False)),
                    ("  − fusion and rows (rescored)", ScoringConfig(hybrid_weight=0.0, question_rows=False)),
                ):
                    retriever.rescore(scoring)
                    block.append(measure(label, retriever, fit_s, queries, qrels))
                retriever.rescore(ScoringConfig())
        frozen = block[1]["R@1"]
        for row in block:
            row.update({"labelled": f"{fraction:.0%}", "vs IP": row["R@1"] - frozen})
        rows.extend(block)
        print(format_table(block, COLUMNS), flush=True)
        write_json(
            out,
            {
                "command": "python -m benchmarks.softcar_bench.transfer "
                + " ".join(sys.argv[1:] if argv is None else argv),
                "dataset": args.dataset,
                "docs": len(corpus),
                "epochs": args.epochs,
                "encoder": args.encoder or "default (all-MiniLM-L6-v2)",
                "seed": args.seed,
                "load_average": os.getloadavg(),
                "note": "timings depend on the machine's load: see load_average (1, 5, 15 min) at the time of writing",
                "rows": rows,
                "wall_s": time.perf_counter() - started,
            },
        )
    print(format_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
