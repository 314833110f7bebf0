"""Quality benchmark of issue #7: feedback must never make softcar worse than frozen search.

Settings (R@1 on questions never trained on):
- ``chatterbot-B`` / ``faq-B``: the original questions are labelled pairs; tested on rewordings.
- ``chatterbot-A`` / ``faq-A``: documents only; tested on rewordings.
- ``debian-transfer``: the first N documents of ../shared/data/debian-packages; the synopses of
  the first half are labelled pairs, the synopses of the second half are the test (documents
  nobody asked about: the deployment's partial-feedback situation).

Rows: BM25, frozen inner product, softcar as released before this change (query prototypes, no
fusion, no question rows), softcar now, and one ablation row per component. Prints a table,
writes ``benchmarks/results/quality.json``.

    python -m benchmarks.softcar_bench.quality [--settings chatterbot-B,debian-transfer] [--epochs 2]
        [--ablations-on chatterbot-B] [--encoder /path/to/hf-model]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.softcar_bench.datasets import FAQ_PATH, load_dataset
from softcar import (
    BM25Retriever,
    ClassifierRetriever,
    InnerProductRetriever,
    ScoringConfig,
    TrainConfig,
    evaluate,
    format_table,
    load_beir,
    query_latency,
    write_json,
)

DEBIAN = FAQ_PATH.parent / "debian-packages"
RESULTS = Path(__file__).resolve().parent.parent / "results" / "quality.json"
SOFT_ONLY = ScoringConfig(hybrid_weight=0.0, question_rows=False)

Split = tuple[dict[str, str], dict[str, dict[str, int]]]


def setting_data(name: str, debian_docs: int) -> tuple[list, list[tuple[str, str]], Split]:
    """``(corpus, labelled pairs, test split)`` of one setting."""
    if name.startswith("debian"):
        ds = load_beir(DEBIAN, duplicate_ids="keep_first")
        corpus = ds.corpus[:debian_docs]
        labelled = {d.id for d in corpus[: debian_docs // 2]}
        unlabelled = {d.id for d in corpus[debian_docs // 2 :]}
        queries, qrels = ds.split("test")
        pairs = [(queries[q], d) for q, docs in qrels.items() for d in docs if d in labelled]
        test = {q: docs for q, docs in qrels.items() if set(docs) <= unlabelled}
        return corpus, pairs, ({q: queries[q] for q in test}, test)
    data = load_dataset("chatterbot_qa" if name.startswith("chatterbot") else "python-faq")
    pairs = data.train_pairs if name.endswith("-B") else []
    return data.corpus, pairs, data.reworded


def variants(epochs: int | None, encoder: str | None = None) -> dict[str, Any]:
    """Retriever builders: baselines, before, now, and one ablation per component; ``encoder``
    (a local model directory, default softcar's) is the frozen SLM of every encoder row."""
    classifier = partial(ClassifierRetriever, encoder)
    train = TrainConfig(show_progress=False)
    if epochs is not None:
        train = train.model_copy(update={"epochs": epochs})
    return {
        "BM25": lambda: BM25Retriever(),
        "frozen inner product": lambda: InnerProductRetriever(encoder, show_progress=False),
        "softcar before (prototypes, no fusion/rows)": lambda: classifier(
            config=train.model_copy(update={"query_prototype_weight": 2.0}), scoring=SOFT_ONLY
        ),
        "softcar before, untrained (epochs=0)": lambda: classifier(
            config=train.model_copy(update={"query_prototype_weight": 2.0, "epochs": 0}), scoring=SOFT_ONLY
        ),
        "softcar now": lambda: classifier(config=train),
        "softcar now, untrained (epochs=0)": lambda: classifier(config=train.model_copy(update={"epochs": 0})),
        "  − BM25 fusion": lambda: classifier(config=train, scoring=ScoringConfig(hybrid_weight=0.0)),
        "  − question rows": lambda: classifier(config=train, scoring=ScoringConfig(question_rows=False)),
        "  + logsumexp at full coverage (τ=0.1)": lambda: classifier(
            config=train, scoring=ScoringConfig(full_coverage_temperature=0.1)
        ),
        "  − BM25 fusion, untrained": lambda: classifier(
            config=train.model_copy(update={"epochs": 0}), scoring=ScoringConfig(hybrid_weight=0.0)
        ),
        "  − question rows, untrained": lambda: classifier(
            config=train.model_copy(update={"epochs": 0}), scoring=ScoringConfig(question_rows=False)
        ),
        "  − adapter training (head only)": lambda: classifier(
            config=train.model_copy(update={"train_adapter": False})
        ),
        "  − head training (adapter only)": lambda: classifier(config=train.model_copy(update={"train_head": False})),
        "  − guard's per-question test (guard_standard_errors=0)": lambda: classifier(
            config=train.model_copy(update={"guard_standard_errors": 0.0})
        ),
        "  − two-standard-error guard (guard_standard_errors=1)": lambda: classifier(
            config=train.model_copy(update={"guard_standard_errors": 1.0})
        ),
        "  − two-standard-error evidence (calibration_standard_errors=1)": lambda: classifier(
            config=train, scoring=ScoringConfig(calibration_standard_errors=1.0)
        ),
        "  − replacement words in simulated rewordings (calibration_replacement_words=False)": lambda: classifier(
            config=train, scoring=ScoringConfig(calibration_replacement_words=False)
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="debian-transfer,chatterbot-B,faq-B,chatterbot-A,faq-A")
    parser.add_argument("--epochs", type=int, default=None, help="default: TrainConfig.epochs")
    parser.add_argument(
        "--ablations-on",
        default="all",
        help="comma-separated settings with ablation rows ('all': every setting; 'none': no setting)",
    )
    parser.add_argument("--debian-docs", type=int, default=1000)
    parser.add_argument(
        "--encoder", default=None, help="local Hugging Face model directory (default: softcar's MiniLM)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", default="", help="Semicolon-separated retriever names to run (default: all).")
    parser.add_argument(
        "--skip", default="", help="Semicolon-separated setting:retriever names not to run (resuming a run)."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skip = {name.strip() for name in args.skip.split(";") if name.strip()}
    settings = args.settings.split(",")
    ablations_on = settings if args.ablations_on == "all" else args.ablations_on.split(",")
    for setting in settings:
        corpus, pairs, (queries, qrels) = setting_data(setting, args.debian_docs)
        for name, build in variants(args.epochs, args.encoder).items():
            if setting not in ablations_on and (name.startswith("  ") or "untrained" in name):
                continue
            if f"{setting}:{name.strip()}" in skip or (args.only and name.strip() not in args.only.split(";")):
                continue
            t = time.perf_counter()
            retriever = build().fit(corpus, queries=pairs or None)
            fit_s = time.perf_counter() - t
            metrics = evaluate(retriever, queries, qrels)
            latency = query_latency(retriever, list(queries.values())[:50])
            calibration = getattr(retriever, "calibration", None)
            rows.append(
                {
                    "setting": setting,
                    "retriever": name,
                    "R@1": metrics["R@1"],
                    "MRR@10": metrics["MRR@10"],
                    "p50 ms": latency["p50_ms"],
                    "fit s": fit_s,
                    "α": "" if calibration is None else calibration.hybrid_weight,
                    "b": "" if calibration is None else str(calibration.question_offset),
                    "τ": "" if calibration is None else str(calibration.question_temperature),
                }
            )
            print(format_table(rows[-1:]), flush=True)
            write_json(
                args.out,
                {
                    "command": "python -m benchmarks.softcar_bench.quality "
                    + " ".join(sys.argv[1:] if argv is None else argv),
                    "epochs": TrainConfig().epochs if args.epochs is None else args.epochs,
                    "load_average": os.getloadavg(),
                    "debian_docs": args.debian_docs,
                    "encoder": args.encoder or "default (all-MiniLM-L6-v2)",
                    "rows": rows,
                    "wall_s": time.perf_counter() - started,
                },
            )
    print(format_table(rows, ["setting", "retriever", "R@1", "MRR@10", "p50 ms", "fit s", "α", "b", "τ"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
