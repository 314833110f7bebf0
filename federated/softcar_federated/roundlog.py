"""The server's round log (JSON) and its plot (PNG): quality and ε per round."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Atomic JSON write (a reader never sees half a log); inf is written as the string "inf"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def plot_rounds(rounds: list[dict], path: Path) -> None:
    """Two panels: held-out R@1 / MRR@10 per round, and cumulative ε per round."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    xs = [r["round"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for source, style in (("server_eval", "-"), ("federated_eval", "--")):
        for metric in ("R@1", "MRR@10"):
            ys = [(r.get(source) or {}).get(metric) for r in rounds]
            if any(y is not None for y in ys):
                left.plot(xs, [float("nan") if y is None else y for y in ys], style, marker="o",
                          label=f"{metric} ({source.replace('_', ' ')})")
    left.set_xlabel("round")
    left.set_ylabel("held-out quality")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    eps = [r.get("epsilon") for r in rounds]
    finite = [e if isinstance(e, (int, float)) and math.isfinite(e) else float("nan") for e in eps]
    right.plot(xs, finite, marker="o", color="tab:red")
    right.set_xlabel("round")
    right.set_ylabel("cumulative ε (max over clients)")
    right.grid(alpha=0.3)
    if all(math.isnan(e) for e in finite):
        right.text(0.5, 0.5, "no DP (ε = ∞)", ha="center", va="center", transform=right.transAxes)
    fig.suptitle("softcar federated fine-tuning")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
