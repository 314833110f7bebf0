"""Question-row aggregation (issue #7, item 1): ``max`` against ``logsumexp`` with a temperature.

A document's score combines its own row with its best question row. softcar takes the maximum:
``max(doc, question − offset)``. The issue also proposes ``τ · logsumexp`` of the two, which
rewards a document whose text and known question *both* match. Both are measured here on the
frozen encoder's embeddings alone: no training, no BM25 fusion, no calibration. Only the
aggregation differs, so nothing else can explain the result.

Settings, R@1 on the reworded questions:
- **B**: every document has its original questions as rows; tested on their rewordings.
- **T**: the original questions of a random ``fraction`` of the documents become rows; tested
  on the rewordings of the *other* documents' questions. Mean over ``--seeds``.

For each aggregation the table gives R@1 at each ``question_offset`` of the grid, and the best of
the grid (an oracle: chosen on the test questions, for both aggregations alike). Prints the table
and writes ``benchmarks/results/aggregation.json``.

    python -m benchmarks.softcar_bench.aggregation [--encoder /path/to/hf-model]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.softcar_bench.datasets import dataset_available, load_dataset
from softcar import InnerProductRetriever, QuestionRows, format_table, write_json

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
OFFSETS = (0.0, 0.1, 0.2, 0.3)


def _embeddings(name: str, encoder: str | None = None) -> dict[str, torch.Tensor]:
    data = load_dataset(name)
    frozen = InnerProductRetriever(encoder, show_progress=False)
    row = {d.id: i for i, d in enumerate(data.corpus)}
    queries, qrels = data.reworded
    test = [(queries[q], row[next(iter(qrels[q]))]) for q in queries]
    return {
        "docs": frozen.embed_documents([d.text for d in data.corpus]),
        "questions": frozen.embed_queries([t for t, _ in data.train_pairs]),
        "question_docs": torch.tensor([row[d] for _, d in data.train_pairs]),
        "tests": frozen.embed_queries([t for t, _ in test]),
        "test_docs": torch.tensor([r for _, r in test]),
    }


def _recall(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(dim=1) == labels).float().mean())


def _scores(soft: torch.Tensor, best: torch.Tensor, aggregation: str, offset: float) -> torch.Tensor:
    if aggregation == "max":
        return torch.maximum(soft, best - offset)
    temperature = float(aggregation.split("=")[1])
    return temperature * torch.logaddexp(soft / temperature, (best - offset) / temperature)


def measure(e: dict[str, torch.Tensor], fraction: float, seeds: int, aggregations: list[str]) -> dict[str, Any]:
    """R@1 per aggregation and offset, mean over seeds (one seed when every document is labelled)."""
    n = len(e["docs"])
    results: dict[str, list[float]] = {}
    for seed in range(1 if fraction >= 1 else seeds):
        ids = list(range(n))
        random.Random(seed).shuffle(ids)
        labelled = torch.zeros(n, dtype=torch.bool)
        labelled[ids[: round(n * fraction)]] = True
        kept = labelled[e["question_docs"]]
        # The retriever's own question rows (its near-duplicate rule and per-document cap included).
        rows = QuestionRows(e["docs"].shape[1])
        rows.add([str(i) for i in range(int(kept.sum()))], e["question_docs"][kept].tolist(), e["questions"][kept])
        tested = torch.ones_like(e["test_docs"], dtype=torch.bool) if fraction >= 1 else ~labelled[e["test_docs"]]
        tests, labels = e["tests"][tested], e["test_docs"][tested]
        soft = tests @ e["docs"].T
        best = rows.best_per_document(tests, n)
        results.setdefault("frozen", []).append(_recall(soft, labels))
        for aggregation in aggregations:
            for offset in OFFSETS:
                results.setdefault(f"{aggregation}@{offset}", []).append(
                    _recall(_scores(soft, best, aggregation, offset), labels)
                )
    return {key: sum(values) / len(values) for key, values in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.1,0.5,0.9,1.0", help="labelled share of documents (1.0: B)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--temperatures", default="0.05,0.1", help="logsumexp temperatures")
    parser.add_argument("--out", type=Path, default=RESULTS / "aggregation.json")
    parser.add_argument(
        "--encoder", default=None, help="local Hugging Face model directory (default: softcar's MiniLM)"
    )
    args = parser.parse_args(argv)
    aggregations = ["max"] + [f"logsumexp τ={t}" for t in args.temperatures.split(",")]
    rows: list[dict[str, Any]] = []
    for name in ("chatterbot_qa", "python-faq"):
        missing = dataset_available(name)
        if missing:
            print(f"skipping {name}: {missing}", file=sys.stderr)
            continue
        embeddings = _embeddings(name, args.encoder)
        for fraction in [float(f) for f in args.fractions.split(",")]:
            measured = measure(embeddings, fraction, args.seeds, aggregations)
            for aggregation in aggregations:
                by_offset = {f"offset {o}": measured[f"{aggregation}@{o}"] for o in OFFSETS}
                rows.append(
                    {
                        "dataset": name,
                        "setting": "B" if fraction >= 1 else f"T {fraction:.0%}",
                        "aggregation": aggregation,
                        "frozen IP": measured["frozen"],
                        **by_offset,
                        "best of grid": max(by_offset.values()),
                    }
                )
    print(format_table(rows))
    write_json(
        args.out,
        {
            "command": " ".join(sys.argv),
            "offsets": OFFSETS,
            "seeds": args.seeds,
            "encoder": args.encoder or "default",
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
