"""Command line: ``python -m benchmarks.softcar_bench`` (or ``python benchmarks/run_benchmark.py``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from softcar import write_json

from . import __doc__ as PACKAGE_DOC
from .datasets import BENCHMARKS
from .jobs import JobRunner
from .plan import Benchmark, RunOptions, log, merge_tuning

DEFAULT_OUT = BENCHMARKS / "results" / "latest.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softcar_bench", description=PACKAGE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--datasets", default="chatterbot_qa,python-faq")
    add("--settings", default="A,B")
    add("--epochs", type=int, default=None, help="softcar epochs (default: TrainConfig's)")
    add(
        "--ft-epochs",
        type=int,
        default=1,
        help="full fine-tuning epochs (default 1: capped to fit the 2-core budget; softcar uses 4)",
    )
    add("--ft-lr", type=float, default=2e-5, help="full fine-tuning learning rate (AdamW)")
    add(
        "--ft-datasets",
        default="chatterbot_qa",
        help="datasets with the full fine-tuning reference (default: chatterbot_qa only, for time)",
    )
    add("--ft-settings", default="A,B", help="settings with the full fine-tuning reference")
    add(
        "--ablations-datasets",
        default="chatterbot_qa",
        help="datasets with head-only / adapter-only (default: chatterbot_qa only, for time)",
    )
    add(
        "--resume",
        action="store_true",
        help="reuse the results already in --out (e.g. of an interrupted run) instead of re-running them",
    )
    add("--resume-from", default=None, help="comma-separated result JSONs to reuse as with --resume")
    add(
        "--no-run",
        action="store_true",
        help="run nothing: assemble --out from --resume/--resume-from results and print the tables",
    )
    add("--no-latency", action="store_true", help="skip the query-latency comparison")
    add("--tune", action="store_true", help="also run the softcar TrainConfig variants (chatterbot_qa)")
    add("--tune-only", action="store_true", help="run only the tuning variants")
    add("--micro-steps", type=int, default=16, help="steps per method in the one-step micro-benchmark (0: skip)")
    add("--threads", type=int, default=None, help="torch threads per job (default: cpu count)")
    add(
        "--quick",
        action="store_true",
        help="smoke configuration (< 2 min): chatterbot_qa only, 24 documents, 1 epoch, in-process",
    )
    add("--in-process", action="store_true", help="run jobs in this process (no per-job memory isolation)")
    add("--out", default=str(DEFAULT_OUT), help="results JSON (the Markdown tables go beside it, .md)")
    add(
        "--merge-tuning",
        default=None,
        metavar="JSON",
        help="no run: copy the tuning rows of JSON into --out (an earlier result) and re-print it",
    )
    return parser


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunOptions:
    datasets = _split(args.datasets)
    if args.quick and args.datasets == parser.get_default("datasets"):
        datasets = ["chatterbot_qa"]
    base_train: dict[str, Any] = {} if args.epochs is None else {"epochs": args.epochs}
    if args.quick:
        base_train.update(epochs=args.epochs or 1, pseudo_queries_per_document=1)
    return RunOptions(
        datasets=datasets,
        settings=[s.upper() for s in _split(args.settings)],
        base_train=base_train,
        threads=args.threads or os.cpu_count() or 1,
        max_docs=24 if args.quick else None,
        ft_epochs=args.ft_epochs,
        ft_lr=args.ft_lr,
        ft_datasets=set(_split(args.ft_datasets) or datasets),
        ft_settings=[s.upper() for s in _split(args.ft_settings)],
        ablations_datasets=set(_split(args.ablations_datasets) or datasets),
        latency=not (args.quick or args.no_latency),
        micro_steps=args.micro_steps,
        tune=args.tune,
        tune_only=args.tune_only,
        quick=args.quick,
    )


def command_line() -> str:
    """How this run was started, as one would type it from the repository root."""
    script = Path(sys.argv[0])
    if script.name == "__main__.py":
        head = ["-m", "benchmarks.softcar_bench"]
    else:
        try:
            head = [str(script.resolve().relative_to(Path.cwd()))]
        except ValueError:
            head = [str(script)]
    return " ".join([Path(sys.executable).name, *head, *sys.argv[1:]])


def new_report(options: RunOptions, runner: JobRunner) -> dict[str, Any]:
    import torch

    from softcar import TrainConfig

    return {
        "command": command_line(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads_per_job": options.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_at_start": os.getloadavg(),
        },
        "config": {
            "softcar_train": TrainConfig(**options.base_train).model_dump(),
            "ft_lr": options.ft_lr,
            "ft_epochs": options.ft_epochs,
            "quick": options.quick,
            "max_docs": options.max_docs,
            "jobs_in_subprocess": not runner.in_process,
        },
        "datasets": {},
        "notes": [],
    }


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    """The JSON (atomically, ``softcar.write_json``) and its tables beside it (``.md``)."""
    write_json(out, report)
    markdown = out.with_suffix(".md")
    tmp = markdown.with_name(f".{markdown.name}.tmp")
    tmp.write_text(report["markdown"] + "\n", encoding="utf-8")
    os.replace(tmp, markdown)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.merge_tuning:
        report = merge_tuning(out, Path(args.merge_tuning))
        write_outputs(out, report)
        print(report["markdown"])
        return 0

    options = options_from(args, parser)
    runner = JobRunner(in_process=args.in_process or args.quick, dry_run=args.no_run)
    report = new_report(options, runner)
    sources = ([out] if args.resume and out.is_file() else []) + [Path(p) for p in _split(args.resume_from)]
    previous = [json.loads(source.read_text()) for source in sources]
    for source, prev in zip(sources, previous, strict=True):
        report["notes"].append(
            f"resumed: results in {source.name} from `{prev.get('command')}` "
            f"(started {prev.get('started')}) were reused, not re-run"
        )
    report["resumed_from"] = [{k: p.get(k) for k in ("command", "started", "run_time_s")} for p in previous]

    report = Benchmark(options, runner, out, report, previous).run()
    write_outputs(out, report)
    print("\n" + report["markdown"])
    log(f"wrote {out} and {out.with_suffix('.md').name}")
    return 0
