"""Encoding benchmark (issue #8: document encoding is most of a 57k fit): float32 vs bfloat16.

Encodes a seeded random sample of ../shared/data/debian-packages documents with the frozen
default encoder (``InnerProductRetriever``, length-sorted batches under the token budget),
once in float32 and once with ``encode_dtype="bfloat16"`` (``torch.autocast``), and reports per variant:
wall time, texts/s, cosine of each document vector to its float32 vector (mean and minimum),
and R@1 / MRR@10 of the package synopses against the sample (frozen inner-product search),
so a faster encoding is only kept if retrieval does not lose. Prints a table and writes
``benchmarks/results/encoding.json``.

    python -m benchmarks.softcar_bench.encoding --docs 1000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from softcar import InnerProductRetriever, evaluate, format_table, load_beir, write_json

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "debian-packages"
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ["encoding", "docs", "wall s", "texts/s", "speed-up", "cos mean", "cos min", "R@1", "MRR@10"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "encoding.json")
    args = parser.parse_args(argv)

    dataset = load_beir(args.data, duplicate_ids="keep_first")
    corpus = random.Random(args.seed).sample(dataset.corpus, min(args.docs, len(dataset.corpus)))
    keep = {d.id for d in corpus}
    pairs = [(text, doc) for text, doc in dataset.training_pairs("test") if doc in keep]
    queries = {f"q{i}": text for i, (text, _) in enumerate(pairs)}
    qrels = {f"q{i}": {doc: 1} for i, (_, doc) in enumerate(pairs)}
    texts = [d.text for d in corpus]

    rows: list[dict[str, Any]] = []
    reference: torch.Tensor | None = None
    for name in ("float32", "bfloat16"):
        retriever = InnerProductRetriever(show_progress=False, encode_dtype=name)  # type: ignore[arg-type]
        retriever.embed_documents(texts[:32])  # warm-up: first-call allocations
        start = time.perf_counter()
        vectors = retriever.embed_documents(texts)
        wall = time.perf_counter() - start
        metrics = evaluate(retriever.fit(corpus), queries, qrels)
        if reference is None:
            reference = vectors
        cosine = torch.nn.functional.cosine_similarity(vectors, reference, dim=1)
        rows.append(
            {
                "encoding": name,
                "docs": len(texts),
                "wall s": wall,
                "texts/s": len(texts) / wall,
                "speed-up": rows[0]["wall s"] / wall if rows else 1.0,
                "cos mean": float(cosine.mean()),
                "cos min": float(cosine.min()),
                "R@1": metrics["R@1"],
                "MRR@10": metrics["MRR@10"],
            }
        )
    print(format_table(rows, COLUMNS))
    write_json(
        args.out,
        {
            "command": "python -m benchmarks.softcar_bench.encoding "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "queries": len(queries),
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
