"""Each deployment's own question rows, with no federated training at all: how much the
calibration's coverage assumption matters.

For every non-IID partition (shared head: each deployment indexes every document), build the
untrained retriever (frozen inner-product search), add the partition's feedback as question
rows (``update(feedback, epochs=0)``) and evaluate on its held-out questions, with calibration
told (a) nothing, i.e. questions spread evenly over the whole index, and (b) the share of the
deployment's *own* documents that have feedback (what ``LocalDeployment.open`` does); the
ablation columns repeat both with one ``ScoringConfig`` change (``--ablation``). Prints a table
and writes JSON.

    HF_HUB_OFFLINE=1 .venv/bin/python federated/benchmarks/bench_local_rows.py \\
        --dataset src/softcar/data/chatterbot_qa --out federated/benchmarks/local-rows-chatterbot.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from softcar_federated import partitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-query-length", type=int, default=24)
    parser.add_argument("--pseudo-queries", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ablation",
        default="calibration_replacement_words=false",
        help="ScoringConfig change of the ablation columns, key=value (e.g. calibration_standard_errors=1)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    key, _, value = args.ablation.partition("=")
    ablation = {key.strip(): value.strip()}  # ScoringConfig.model_validate parses "false", "1", ...
    start = time.perf_counter()
    split = partitions.load_split(args.dataset, seed=args.seed)
    rows = []
    for part in partitions.partition(split, args.clients, iid=False, seed=args.seed):
        retriever = partitions.build_retriever(
            split.corpus,
            max_query_length=args.max_query_length,
            pseudo_queries=args.pseudo_queries,
            seed=args.seed,
        )
        frozen = partitions.quality(retriever, part.heldout)["R@1"]
        retriever.update(part.feedback, epochs=0)
        uniform, uniform_cal = partitions.quality(retriever, part.heldout)["R@1"], retriever.calibration
        # The ablation columns: the same rows, calibrated with one ScoringConfig change (validated).
        scoring = retriever.config.scoring
        retriever.rescore(scoring.model_validate({**scoring.model_dump(), **ablation}))
        uniform_ablated = partitions.quality(retriever, part.heldout)["R@1"]
        asked = {doc_id for _, doc_id in part.feedback} & set(part.doc_ids)
        coverage = len(asked) / len(part.doc_ids)
        retriever.rescore(scoring.model_copy(update={"feedback_coverage": coverage}))
        own, own_cal = partitions.quality(retriever, part.heldout)["R@1"], retriever.calibration
        retriever.rescore(scoring.model_validate({**scoring.model_dump(), "feedback_coverage": coverage, **ablation}))
        own_ablated, own_ablated_cal = partitions.quality(retriever, part.heldout)["R@1"], retriever.calibration
        rows.append(
            {
                "partition": part.index,
                "documents_held": len(part.doc_ids),
                "heldout": len(part.heldout),
                "own_coverage": coverage,
                "R@1_frozen": frozen,
                "R@1_rows_uniform_coverage": uniform,
                "calibration_uniform": uniform_cal.model_dump(),
                "R@1_rows_uniform_coverage_ablated": uniform_ablated,
                "R@1_rows_own_coverage": own,
                "calibration_own": own_cal.model_dump(),
                "R@1_rows_own_coverage_ablated": own_ablated,
                "calibration_own_ablated": own_ablated_cal.model_dump(),
            }
        )
    total = sum(r["heldout"] for r in rows)
    overall = {
        key: sum(r[key] * r["heldout"] for r in rows) / total
        for key in (
            "R@1_frozen",
            "R@1_rows_uniform_coverage",
            "R@1_rows_uniform_coverage_ablated",
            "R@1_rows_own_coverage",
            "R@1_rows_own_coverage_ablated",
        )
    }
    print(
        "| partition | held-out | own coverage | frozen "
        f"| rows, whole-index coverage (α, offset) | same, {args.ablation} "
        f"| rows, own coverage (α, offset) | same, {args.ablation} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        u, o, e = r["calibration_uniform"], r["calibration_own"], r["calibration_own_ablated"]
        print(
            f"| {r['partition']} | {r['heldout']} | {r['own_coverage']:.2f} | {r['R@1_frozen']:.3f} "
            f"| {r['R@1_rows_uniform_coverage']:.3f} ({u['hybrid_weight']}, {u['question_offset']}) "
            f"| {r['R@1_rows_uniform_coverage_ablated']:.3f} "
            f"| {r['R@1_rows_own_coverage']:.3f} ({o['hybrid_weight']}, {o['question_offset']}) "
            f"| {r['R@1_rows_own_coverage_ablated']:.3f} ({e['hybrid_weight']}, {e['question_offset']}) |"
        )
    print(
        f"| all | {total} | | {overall['R@1_frozen']:.3f} | {overall['R@1_rows_uniform_coverage']:.3f} "
        f"| {overall['R@1_rows_uniform_coverage_ablated']:.3f} "
        f"| {overall['R@1_rows_own_coverage']:.3f} | {overall['R@1_rows_own_coverage_ablated']:.3f} |"
    )
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "partitions": rows, "overall": overall}
    result["wall_s"] = time.perf_counter() - start
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
