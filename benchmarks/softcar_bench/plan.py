"""What a benchmark run does, job by job, and the report it builds (no module-level state:
everything a run needs is on its :class:`Benchmark`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softcar import write_json

from .datasets import dataset_available, load_dataset
from .fullft import FullFineTuneJob
from .jobs import BaselinesJob, JobRunner, MicroJob, SoftcarJob
from .report import render, targets

SOFTCAR_METHODS: dict[str, dict[str, Any]] = {
    "softcar": {},
    "head_only": {"train_adapter": False},
    "adapter_only": {"train_head": False},
}

# Each variant overrides the default TrainConfig / adapter; "settings" limits where it runs (budget).
TUNING_VARIANTS: dict[str, dict[str, Any]] = {
    "epochs=0 (B: query prototypes, no training)": {"train": {"epochs": 0}, "settings": ["B"]},
    "query_prototype_weight=0": {"train": {"query_prototype_weight": 0.0}, "settings": ["B"]},
    "head_anchor=0": {"train": {"head_anchor": 0.0}},
    "lr x4 (2e-4 / 2e-3)": {"train": {"learning_rate": 2e-4, "head_learning_rate": 2e-3}, "settings": ["A"]},
}
QUICK_TUNING: dict[str, dict[str, Any]] = {
    "default (linear, 4 ep)": {},
    "logit_scale=40": {"train": {"logit_scale": 40.0}},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class RunOptions:
    """Everything that decides what runs (parsed from the command line by :mod:`.cli`)."""

    datasets: list[str]
    settings: list[str]
    base_train: dict[str, Any]
    threads: int
    max_docs: int | None = None
    ft_epochs: int = 1
    ft_lr: float = 2e-5
    ft_datasets: set[str] = field(default_factory=set)
    ft_settings: list[str] = field(default_factory=lambda: ["A", "B"])
    ablations_datasets: set[str] = field(default_factory=set)
    latency: bool = True
    micro_steps: int = 16
    tune: bool = False
    tune_only: bool = False
    quick: bool = False


class Benchmark:
    """One run: jobs through ``runner``, results into ``report``, checkpointed to ``out``.

    ``previous``: earlier reports whose results are reused instead of re-run (``--resume``).
    """

    def __init__(
        self,
        options: RunOptions,
        runner: JobRunner,
        out: Path,
        report: dict[str, Any],
        previous: list[dict[str, Any]] | None = None,
    ) -> None:
        self.options, self.runner, self.out, self.report = options, runner, out, report
        self.previous = previous or []
        self.started = time.perf_counter()
        self.notes: list[str] = report.setdefault("notes", [])
        report.setdefault("datasets", {})

    # ------------------------------------------------------------------ bookkeeping
    def reuse(self, dataset: str, setting: str | None, method: str) -> dict[str, Any] | None:
        for prev in self.previous:
            entry = prev.get("datasets", {}).get(dataset, {})
            if setting is None:
                found = entry.get("baselines")
            else:
                found = entry.get("settings", {}).get(setting, {}).get(method)
            if found and "error" not in found:
                return found
        return None

    def checkpoint(self, complete: bool = False) -> None:
        """Results so far, after every job: an interrupted run still leaves its numbers behind."""
        self.report["run_time_s"] = time.perf_counter() - self.started
        self.report["complete"] = complete
        write_json(self.out, self.report)

    def run_job(self, job: Any) -> dict[str, Any]:
        log(job.describe())
        load = os.getloadavg()
        out = self.runner.run(job)
        result = dict(out["result"]) if out["ok"] else {"error": out["error"]}
        result.update(job_wall_s=out["wall_s"], load_avg_at_job_start=load)
        return result

    # ------------------------------------------------------------------ phases
    def run(self) -> dict[str, Any]:
        opts = self.options
        for name in list(opts.datasets):
            why = dataset_available(name)
            if why:
                self.notes.append(f"{name} skipped: {why}")
                log(f"skipping {name}: {why}")
                opts.datasets.remove(name)
        if not opts.tune_only:
            for dataset in opts.datasets:
                self.run_dataset(dataset)
            if opts.micro_steps > 0:
                self.run_micro()
        self.reuse_micro()
        if opts.tune or opts.tune_only:
            self.run_tuning()
        self.report["targets"] = targets(self.report)
        self.report["machine"]["load_avg_at_end"] = os.getloadavg()
        self.report["run_time_s"] = time.perf_counter() - self.started
        self.report["markdown"] = render(self.report)
        self.checkpoint(complete=True)
        return self.report

    def run_dataset(self, dataset: str) -> None:
        opts = self.options
        info = load_dataset(dataset, opts.max_docs)
        entry: dict[str, Any] = {
            "documents": len(info.corpus),
            "original_questions": len(info.original[0]),
            "reworded_questions": len(info.reworded[0]),
            "labelled_pairs_B": len(info.train_pairs),
            "settings": {},
        }
        self.report["datasets"][dataset] = entry
        base = self.reuse(dataset, None, "baselines")
        base = base or self.run_job(BaselinesJob(dataset, opts.threads, opts.max_docs))
        entry["baselines"] = base
        softcar_epochs = self.report["config"]["softcar_train"]["epochs"]
        with_ft = dataset in opts.ft_datasets
        with_ablations = dataset in opts.ablations_datasets
        if not with_ablations:
            self.notes.append(f"{dataset}: no head-only / adapter-only ablations (--ablations-datasets), for time")
        if not with_ft:
            self.notes.append(f"{dataset}: no full fine-tuning reference (--ft-datasets), to keep the run in budget")
        elif opts.ft_epochs != softcar_epochs:
            self.notes.append(
                f"{dataset}: full fine-tuning capped at {opts.ft_epochs} epoch(s) "
                f"(softcar: {softcar_epochs}) to keep the run within budget"
            )
        for setting in opts.settings:
            results: dict[str, Any] = entry["settings"].setdefault(setting, {})
            if "error" not in base:
                results.update(bm25=base["bm25"], inner_product=base["inner_product"])
            methods = ["softcar"] + (["head_only", "adapter_only"] if with_ablations else [])
            methods += [m for m in SOFTCAR_METHODS if m not in methods and self.reuse(dataset, setting, m)]
            for method in methods:
                old = self.reuse(dataset, setting, method)
                if old:
                    log(f"{method} {dataset} {setting} (reused)")
                    results[method] = old
                    continue
                results[method] = self.run_job(
                    SoftcarJob(
                        dataset,
                        setting,
                        method,
                        train={**opts.base_train, **SOFTCAR_METHODS[method]},
                        latency=method == "softcar" and setting == opts.settings[0] and opts.latency,
                        threads=opts.threads,
                        max_docs=opts.max_docs,
                    )
                )
                self.checkpoint()
            old = self.reuse(dataset, setting, "full_ft")
            if old:
                results["full_ft"] = old
            elif with_ft and setting in opts.ft_settings:
                results["full_ft"] = self.run_job(
                    FullFineTuneJob(
                        dataset,
                        setting,
                        train=opts.base_train,
                        epochs=opts.ft_epochs,
                        lr=opts.ft_lr,
                        threads=opts.threads,
                        max_docs=opts.max_docs,
                    )
                )
                self.checkpoint()

    def run_micro(self) -> None:
        from softcar import TrainConfig

        opts = self.options
        job = MicroJob(
            "chatterbot_qa",
            batch_size=TrainConfig(**opts.base_train).batch_size,
            seq_len=32,
            steps=3 if opts.quick else opts.micro_steps,
            threads=opts.threads,
            max_docs=opts.max_docs,
        )
        self.report["train_step_micro"] = self.run_job(job)
        self.checkpoint()

    def reuse_micro(self) -> None:
        if "softcar" in (self.report.get("train_step_micro") or {}):
            return
        for prev in self.previous:
            if "softcar" in (prev.get("train_step_micro") or {}):
                self.report["train_step_micro"] = prev["train_step_micro"]
                return

    def run_tuning(self) -> None:
        opts = self.options
        variants = QUICK_TUNING if opts.quick else TUNING_VARIANTS
        tuning: list[dict[str, Any]] = self.report.setdefault("tuning", [])
        for setting in opts.settings:
            for label, variant in variants.items():
                if setting not in variant.get("settings", [setting]):
                    continue
                train = {**opts.base_train, **variant.get("train", {})}
                adapter = variant.get("adapter", "linear")
                res = self.run_job(
                    SoftcarJob(
                        "chatterbot_qa",
                        setting,
                        label,
                        train=train,
                        adapter=adapter,
                        threads=opts.threads,
                        max_docs=opts.max_docs,
                    )
                )
                row: dict[str, Any] = {"setting": setting, "variant": label, "train": train, "adapter": adapter}
                if "error" in res:
                    row["error"] = res["error"]
                else:
                    row.update({k: res[k] for k in ("metrics", "train_loop_s", "ms_per_example", "trainable_params")})
                tuning.append(row)
                self.checkpoint()


def merge_tuning(out: Path, tuning_json: Path) -> dict[str, Any]:
    """No run: add the tuning rows of ``tuning_json`` (a ``--tune-only`` run) to the report in ``out``."""
    report = json.loads(out.read_text())
    extra = json.loads(tuning_json.read_text())
    # the default configuration's rows come from the main run's own softcar results
    defaults = []
    for setting, results in report["datasets"].get("chatterbot_qa", {}).get("settings", {}).items():
        res = results.get("softcar", {})
        if "metrics" in res:
            defaults.append(
                {
                    "setting": setting,
                    "variant": "default (main run)",
                    "train": {},
                    "adapter": "linear",
                    **{k: res[k] for k in ("metrics", "train_loop_s", "ms_per_example", "trainable_params")},
                }
            )
    report["tuning"] = sorted(defaults + extra.get("tuning", []), key=lambda r: r["setting"])
    report.setdefault("notes", []).append(
        f"tuning rows from a separate run: `{extra.get('command')}` ({extra.get('run_time_s', 0):.0f} s, "
        "run concurrently with the main run)"
    )
    report["tuning_run"] = {k: extra.get(k) for k in ("command", "started", "run_time_s", "machine", "config")}
    report["markdown"] = render(report)
    return report
