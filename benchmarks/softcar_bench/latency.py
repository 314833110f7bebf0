"""Query latency of issue #7: softcar with BM25 fusion and question rows vs frozen inner product.

Both retrievers are fitted on the packaged chatterbot_qa set (softcar with the original
questions as labelled pairs, so fusion and question rows are in force; ``epochs=0`` because
latency does not depend on training), then measured in the same process, interleaved over
several rounds, on the reworded questions. Target: p50 ≤ 1.3× frozen inner product. Writes
``benchmarks/results/latency.json``.

    python -m benchmarks.softcar_bench.latency --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from softcar import (
    ClassifierRetriever,
    InnerProductRetriever,
    ScoringConfig,
    TrainConfig,
    format_table,
    load_beir,
    packaged_dataset_path,
    query_latency,
    write_json,
)

RESULTS = Path(__file__).resolve().parent.parent / "results" / "latency.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    ds = load_beir(packaged_dataset_path("chatterbot_qa"))
    pairs = ds.training_pairs("train")
    queries = list(ds.split("test")[0].values())[: args.queries]
    untrained = TrainConfig(epochs=0, show_progress=False)
    retrievers = {
        "frozen inner product": InnerProductRetriever(show_progress=False).fit(ds.corpus),
        "softcar, fusion + question rows": ClassifierRetriever(config=untrained).fit(ds.corpus, queries=pairs),
        "softcar, soft scores only": ClassifierRetriever(
            config=untrained, scoring=ScoringConfig(hybrid_weight=0.0, question_rows=False)
        ).fit(ds.corpus, queries=pairs),
    }
    fused = retrievers["softcar, fusion + question rows"]
    fused.rescore(ScoringConfig(hybrid_weight=0.3))  # fusion on, whatever the calibration chose
    p50: dict[str, list[float]] = {name: [] for name in retrievers}
    for _ in range(args.rounds):
        for name, retriever in retrievers.items():
            p50[name].append(query_latency(retriever, queries)["p50_ms"])
    frozen = statistics.median(p50["frozen inner product"])
    rows = [
        {"retriever": name, "p50 ms": statistics.median(v), "× frozen": statistics.median(v) / frozen, "rounds": v}
        for name, v in p50.items()
    ]
    print(format_table(rows, ["retriever", "p50 ms", "× frozen"]))
    write_json(
        args.out,
        {
            "command": "python -m benchmarks.softcar_bench.latency " + " ".join(sys.argv[1:] if argv is None else argv),
            "documents": len(ds.corpus),
            "load_average": os.getloadavg(),
            "note": "2-core CPU shared with other developers' jobs; medians of interleaved rounds",
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
