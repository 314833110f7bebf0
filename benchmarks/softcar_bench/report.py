"""Targets and Markdown tables of a results report (the JSON written by the benchmark)."""

from __future__ import annotations

from typing import Any

from softcar import format_table

from .datasets import eval_splits, split_label

TARGETS = {"A_recall1_gain": 0.05, "B_recall1": 0.95, "step_time_ratio": 0.4, "latency_ratio": 1.1}
MICRO_METHODS = ("softcar", "full_ft_same_loss", "full_ft_mnrl")


def _target(name: str, value: float, op: str, threshold: float) -> dict[str, Any]:
    met = value >= threshold if op == ">=" else value <= threshold
    shown = f"+{threshold}" if name.startswith("A ") else f"{threshold}"
    return {"name": name, "value": value, "threshold": f"{op} {shown}", "met": met}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value, threshold and whether it is met."""
    out = []
    for dataset, entry in report["datasets"].items():
        settings = entry.get("settings", {})
        a = settings.get("A", {})
        if "metrics" in a.get("softcar", {}) and "metrics" in a.get("inner_product", {}):
            for split in ("original", "reworded"):
                gain = a["softcar"]["metrics"][split]["R@1"] - a["inner_product"]["metrics"][split]["R@1"]
                out.append(
                    _target(
                        f"A {dataset} ({split}): softcar R@1 - inner-product R@1", gain, ">=", TARGETS["A_recall1_gain"]
                    )
                )
        b = settings.get("B", {})
        if "metrics" in b.get("softcar", {}):
            out.append(
                _target(
                    f"B {dataset} (reworded): softcar R@1",
                    b["softcar"]["metrics"]["reworded"]["R@1"],
                    ">=",
                    TARGETS["B_recall1"],
                )
            )
        for results in settings.values():
            lat = results.get("softcar", {}).get("latency")
            if lat:
                for p in ("p50", "p95"):
                    ratio = lat["softcar"][f"{p}_ms"] / lat["inner_product"][f"{p}_ms"]
                    out.append(
                        _target(
                            f"latency {dataset}: softcar / inner-product {p}", ratio, "<=", TARGETS["latency_ratio"]
                        )
                    )
        for setting, results in settings.items():
            sc, ft = results.get("softcar", {}), results.get("full_ft", {})
            if sc.get("ms_per_example") and ft.get("ms_per_example"):
                out.append(
                    _target(
                        f"train time per example {dataset} {setting}: softcar / full FT (MNRL)",
                        sc["ms_per_example"] / ft["ms_per_example"],
                        "<=",
                        TARGETS["step_time_ratio"],
                    )
                )
    micro = report.get("train_step_micro") or {}
    for key, label in (
        ("ratio_softcar_vs_full_same_loss", "full fine-tuning (same model, same loss, same batch)"),
        ("ratio_softcar_vs_full_mnrl", "full fine-tuning with sentence-transformers MNRL"),
    ):
        if key in micro:
            out.append(_target(f"training step: softcar / {label}", micro[key], "<=", TARGETS["step_time_ratio"]))
    return out


def _metric_row(method: str, res: dict[str, Any], split: str) -> dict[str, Any]:
    if "error" in res:
        return {"method": method, "R@1": "error: " + str(res["error"])[:60]}
    row: dict[str, Any] = {"method": method}
    row.update({m: res["metrics"][split].get(m) for m in ("R@1", "R@5", "MRR@10", "nDCG@10")})
    row.update(
        {
            "trainable params": res.get("trainable_params", 0),
            "train ms/example": res.get("ms_per_example") or "",
            "train loop s": res.get("train_loop_s", ""),
            "peak mem MiB": res.get("memory", {}).get("peak_delta_mib", ""),
        }
    )
    return row


def quality_tables(report: dict[str, Any]) -> list[str]:
    tables = []
    for dataset, entry in report["datasets"].items():
        for setting, results in entry.get("settings", {}).items():
            for split in eval_splits(setting):
                rows = [
                    _metric_row(method, res, split)
                    for method, res in results.items()
                    if "error" in res or split in res.get("metrics", {})
                ]
                tables.append(
                    f"### {dataset}, setting {setting}, {split_label(setting, split)} questions "
                    f"({entry['documents']} docs)\n\n" + format_table(rows)
                )
    return tables


def latency_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for dataset, entry in report["datasets"].items():
        for setting, results in entry.get("settings", {}).items():
            lat = results.get("softcar", {}).get("latency")
            if lat:
                sc, ip = lat["softcar"], lat["inner_product"]
                rows.append(
                    {
                        "dataset": dataset,
                        "setting": setting,
                        "softcar p50 ms": sc["p50_ms"],
                        "softcar p95 ms": sc["p95_ms"],
                        "inner-product p50 ms": ip["p50_ms"],
                        "inner-product p95 ms": ip["p95_ms"],
                        "p50 ratio": sc["p50_ms"] / ip["p50_ms"],
                        "p95 ratio": sc["p95_ms"] / ip["p95_ms"],
                        "samples": sc["samples"],
                    }
                )
    return ["### Query latency (single query, k=10, interleaved)\n\n" + format_table(rows)] if rows else []


def micro_table(report: dict[str, Any]) -> list[str]:
    micro = report.get("train_step_micro") or {}
    if "softcar" not in micro:
        return []
    rows = [
        {
            "method": n,
            "median ms/step": micro[n]["median_ms"],
            "min ms/step": micro[n]["min_ms"],
            "trainable params": micro[n]["trainable_params"],
            "ratio softcar / this": micro["softcar"]["median_ms"] / micro[n]["median_ms"],
        }
        for n in MICRO_METHODS
        if n in micro
    ]
    return [
        f"### One training step (batch {micro['batch_size']}, {micro['seq_len']} tokens, "
        f"forward+backward+AdamW, median of {micro['softcar']['steps']})\n\n" + format_table(rows)
    ]


def tuning_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for row in report.get("tuning") or []:
        r: dict[str, Any] = {"setting": row["setting"], "variant": row["variant"]}
        if "metrics" not in row:
            rows.append({**r, "original R@1": "error"})
            continue
        for split, m in row["metrics"].items():
            r[f"{split} R@1"] = m["R@1"]
            r[f"{split} MRR@10"] = m["MRR@10"]
        r["train loop s"] = row["train_loop_s"]
        rows.append(r)
    return ["### Tuning: softcar TrainConfig variants on chatterbot_qa\n\n" + format_table(rows)] if rows else []


def render(report: dict[str, Any]) -> str:
    """The Markdown tables of a results report."""
    tables = quality_tables(report) + latency_table(report) + micro_table(report) + tuning_table(report)
    target_rows = [
        {"target": t["name"], "value": t["value"], "threshold": t["threshold"], "met": "yes" if t["met"] else "no"}
        for t in report.get("targets", [])
    ]
    if target_rows:
        tables.append("### Targets\n\n" + format_table(target_rows))
    if report.get("notes"):
        tables.append("Notes:\n" + "\n".join(f"- {n}" for n in report["notes"]))
    machine = report["machine"]
    tables.append(
        f"Run time: {report.get('run_time_s', 0):.0f} s; command: `{report['command']}`; "
        f"{machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"{machine['torch_threads_per_job']} torch threads per job; load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine.get('load_avg_at_start', []))}."
    )
    return "\n\n".join(tables)
