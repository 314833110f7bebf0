"""The plot of the server's round log (PNG): quality and ε per round (the log is JSON, written
with ``softcar.write_json``)."""

from __future__ import annotations

import math
import os
from pathlib import Path


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
                left.plot(
                    xs,
                    [float("nan") if y is None else y for y in ys],
                    style,
                    marker="o",
                    label=f"{metric} ({source.replace('_', ' ')})",
                )
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
