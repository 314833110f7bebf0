"""Fit time per training example, this code against an older source tree (issue #7's "fit time
per example no worse than today's").

Each measurement is one ``ClassifierRetriever(config=TrainConfig(show_progress=False)).fit`` with
that tree's defaults, in a fresh Python process whose ``softcar`` comes from the tree under test
(``PYTHONPATH``), the two trees interleaved repeat by repeat so that machine load falls on both
alike. "Per example" divides the whole fit (document encoding, training, and in the current code
the held-out guard and the calibration) by the training examples times the epochs, both taken
from softcar's own ``fitting on ... examples`` log line, so a tree that trains on fewer examples
(the current one holds 20 % of the labelled documents out) is not credited for it. Prints a table
and writes JSON.

    git worktree add --detach /tmp/softcar-before 758053a   # main when issue #7 was filed
    python -m benchmarks.softcar_bench.fit_cost --before /tmp/softcar-before/src [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "results" / "fit-cost.json"
SETTINGS = ("chatterbot-A", "chatterbot-B", "faq-B")
HERE = Path(__file__).resolve().parents[2]


class _ExampleCount(logging.Handler):
    """The example count of softcar's ``fitting on ... examples`` log line (its last argument)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.examples: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("fitting on") and isinstance(record.args, tuple):
            self.examples = int(record.args[-1])


def measure(setting: str) -> dict[str, Any]:
    """One timed fit of ``setting`` with whatever ``softcar`` this process imports."""
    import softcar
    from benchmarks.softcar_bench.datasets import load_dataset
    from softcar import ClassifierRetriever, TrainConfig, evaluate

    data = load_dataset("chatterbot_qa" if setting.startswith("chatterbot") else "python-faq")
    pairs = data.train_pairs if setting.endswith("-B") else None
    counter = _ExampleCount()
    logger = logging.getLogger("softcar")
    logger.setLevel(logging.INFO)
    logger.addHandler(counter)
    config = TrainConfig(show_progress=False)
    started = time.perf_counter()
    retriever = ClassifierRetriever(config=config).fit(data.corpus, queries=pairs)
    fit_s = time.perf_counter() - started
    queries, qrels = data.reworded
    if counter.examples is None:
        raise RuntimeError("softcar logged no 'fitting on ... examples' line")
    return {
        "setting": setting,
        "softcar": str(Path(softcar.__file__).parent),
        "fit_s": fit_s,
        "examples": counter.examples,
        "epochs": config.epochs,
        "ms_per_example": 1000 * fit_s / (counter.examples * max(config.epochs, 1)),
        "R@1": evaluate(retriever, queries, qrels)["R@1"],
    }


def run_worker(src: Path, setting: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(HERE)])}
    command = [sys.executable, "-m", "benchmarks.softcar_bench.fit_cost", "--worker", setting]
    done = subprocess.run(command, env=env, cwd=HERE, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker for {src} / {setting} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="the older tree's src/ folder (the one holding softcar/)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    arguments = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments)
    if args.worker:
        print(json.dumps(measure(args.worker)))
        return 0
    if args.before is None or not (args.before / "softcar").is_dir():
        parser.error("--before must be a src/ folder that holds softcar/")
    from softcar import format_table, write_json

    trees = {"before": args.before.resolve(), "now": HERE / "src"}
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for setting in args.settings.split(","):
            for label, src in trees.items():
                runs.append({"tree": label, "repeat": repeat, **run_worker(src, setting)})
                logging.getLogger(__name__).info("%s", runs[-1])
    rows = []
    for setting in args.settings.split(","):
        median = {
            label: {
                key: statistics.median(r[key] for r in runs if r["tree"] == label and r["setting"] == setting)
                for key in ("fit_s", "ms_per_example", "R@1", "examples")
            }
            for label in trees
        }
        rows.append(
            {
                "setting": setting,
                "examples before / now": f"{median['before']['examples']:.0f} / {median['now']['examples']:.0f}",
                "fit s before / now": f"{median['before']['fit_s']:.1f} / {median['now']['fit_s']:.1f}",
                "ms per example before": f"{median['before']['ms_per_example']:.2f}",
                "ms per example now": f"{median['now']['ms_per_example']:.2f}",
                "now / before": f"{median['now']['ms_per_example'] / median['before']['ms_per_example']:.2f}×",
                "R@1 before / now": f"{median['before']['R@1']:.3f} / {median['now']['R@1']:.3f}",
            }
        )
    print(format_table(rows))
    write_json(
        args.out,
        {
            "command": " ".join(["python -m benchmarks.softcar_bench.fit_cost", *arguments]),
            "load_average": os.getloadavg(),
            "trees": {label: str(src) for label, src in trees.items()},
            "rows": rows,
            "runs": runs,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
