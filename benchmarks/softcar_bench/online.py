"""Online feedback of issue #7: successive ``update()`` calls with one (question, doc) pair each.

softcar is fitted on the packaged chatterbot_qa documents with the original questions of a
seeded half of them as labelled pairs. Then, one at a time, the reworded question of another
document is given as feedback. After each update that question must retrieve its document at
rank 1 at once, and R@1 on the reworded questions of the documents that never get feedback
must not drop (target: ≤ 0.5 points). Whether feedback carries to rewordings is measured on the
original wording of each feedback question (never given), before and after all updates. Rows
for the new defaults (``update_epochs=0``: question rows and re-calibration only), for updates
that train 3 epochs (the default until 2026-12-03), for the previous release's (no held-out
pairs, so no guard) and for calibration without replacement words (``no-replacement``). Prints
a table, writes ``benchmarks/results/online.json``.

    python -m benchmarks.softcar_bench.online --updates 100 --epochs 1
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from softcar import (
    ClassifierRetriever,
    ScoringConfig,
    TrainConfig,
    evaluate,
    format_table,
    load_beir,
    packaged_dataset_path,
    write_json,
)

RESULTS = Path(__file__).resolve().parent.parent / "results" / "online.json"


def _evaluation_split(pairs: list[tuple[str, str]], prefix: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """``(queries, qrels)`` for :func:`softcar.evaluate` from ``(question, doc id)`` pairs."""
    return (
        {f"{prefix}{i}": text for i, (text, _) in enumerate(pairs)},
        {f"{prefix}{i}": {doc: 1} for i, (_, doc) in enumerate(pairs)},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1, help="fit epochs")
    parser.add_argument("--update-epochs", type=int, default=None, help="default: TrainConfig.update_epochs")
    parser.add_argument("--every", type=int, default=10, help="measure R@1 of the others every N updates")
    parser.add_argument("--variants", default="new,trained,before")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    ds = load_beir(packaged_dataset_path("chatterbot_qa"))
    ids = [d.id for d in ds.corpus]
    random.Random(0).shuffle(ids)
    half = len(ids) // 2
    labelled = set(ids[:half])
    feedback_docs = ids[half : half + args.updates]
    others = set(ids[half + args.updates :])
    pairs = [(t, d) for t, d in ds.training_pairs("train") if d in labelled]
    reworded = ds.training_pairs("test")
    feedback = [(t, d) for t, d in reworded if d in set(feedback_docs)]
    # the other wording of each feedback question: does what was learnt carry to it?
    asked = {d for _, d in feedback}
    other_wording = [(t, d) for t, d in ds.training_pairs("train") if d in asked]
    wording_q, wording_qrels = _evaluation_split(other_wording, "w")
    test = [(t, d) for t, d in reworded if d in others]
    queries, qrels = _evaluation_split(test, "q")
    summary: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    configs = {
        "softcar new defaults": TrainConfig(epochs=args.epochs, show_progress=False),
        "softcar, update_epochs=3 (default until 2026-12-03)": TrainConfig(
            epochs=args.epochs, update_epochs=3, show_progress=False
        ),
        "softcar before (main defaults)": TrainConfig(epochs=args.epochs, holdout_fraction=0.0, show_progress=False),
        "softcar, calibration_replacement_words=False (default until 2026-12-06)": TrainConfig(
            epochs=args.epochs, show_progress=False
        ),
    }
    scorings = {
        "softcar, calibration_replacement_words=False (default until 2026-12-06)": ScoringConfig(
            calibration_replacement_words=False
        )
    }
    wanted = {
        "new": "softcar new defaults",
        "trained": "softcar, update_epochs=3 (default until 2026-12-03)",
        "before": "softcar before (main defaults)",
        "no-replacement": "softcar, calibration_replacement_words=False (default until 2026-12-06)",
    }
    for key in args.variants.split(","):
        name = wanted[key]
        retriever = ClassifierRetriever(config=configs[name], scoring=scorings.get(name)).fit(ds.corpus, queries=pairs)
        start_r1 = evaluate(retriever, queries, qrels)["R@1"]
        wording_before = evaluate(retriever, wording_q, wording_qrels)["R@1"]
        curve = [{"updates": 0, "R@1 others": start_r1}]
        at_once = 0
        kept = 0
        update_s = 0.0
        for i, (text, doc) in enumerate(feedback, 1):
            t = time.perf_counter()
            losses = retriever.update([(text, doc)], epochs=args.update_epochs)
            update_s += time.perf_counter() - t
            kept += bool(losses) and retriever.training_kept is not False
            at_once += retriever.retrieve(text, k=1)[0].document.id == doc
            if i % args.every == 0 or i == len(feedback):
                curve.append({"updates": i, "R@1 others": evaluate(retriever, queries, qrels)["R@1"]})
                print(f"{name}: {curve[-1]}", flush=True)
        worst = min(point["R@1 others"] for point in curve)
        summary.append(
            {
                "retriever": name,
                "updates": len(feedback),
                "rank 1 at once": at_once / len(feedback),
                "R@1 others before": start_r1,
                "R@1 others after": curve[-1]["R@1 others"],
                "worst drop (points)": 100 * (start_r1 - worst),
                "R@1 other wording before": wording_before,
                "R@1 other wording after": evaluate(retriever, wording_q, wording_qrels)["R@1"],
                "updates kept": kept,
                "s per update": update_s / len(feedback),
            }
        )
        curves[name] = curve
        write_json(
            args.out,
            {
                "command": "python -m benchmarks.softcar_bench.online "
                + " ".join(sys.argv[1:] if argv is None else argv),
                "labelled_pairs": len(pairs),
                "other_questions": len(test),
                "other_wordings": len(other_wording),
                "load_average": os.getloadavg(),
                "note": "2-core CPU; the load average says whether anything else ran",
                "summary": summary,
                "curves": curves,
                "wall_s": time.perf_counter() - started,
            },
        )
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
