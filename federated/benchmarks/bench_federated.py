"""Benchmark: centralised vs federated (2/4 clients, IID / non-IID) softcar fine-tuning, with
client DP-SGD at several ε. Every FL run is a real SuperLink + SuperNodes on loopback.

Measures held-out Recall@1 / MRR@10 after each round (epoch for centralised), the wall time to
reach a target quality (centralised best R@1 minus ``--target-gap``), the speed-up of FL over
centralised to that quality, and the quality cost of DP. Prints a Markdown table, writes JSON.

    python federated/benchmarks/bench_federated.py --grid quick --out federated/benchmarks/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from softcar import ClassifierRetriever, Trainer, TrainerCallback, write_json
from softcar_federated import partitions
from softcar_federated.local_experiment import (
    LocalRunSpec,
    centralized_config,
    centralized_retriever,
    run_local,
)
from softcar_federated.local_training import DPParams, train_round
from softcar_federated.privacy import planned_noise

GRIDS = {
    # (clients, iid, epsilon)
    "full": [(c, iid, e) for c in (2, 4) for iid in (False, True) for e in (math.inf, 8.0, 4.0, 1.0)],
    "quick": [
        (2, False, math.inf),
        (2, True, math.inf),
        (4, False, math.inf),
        (4, True, math.inf),
        (2, False, 8.0),
        (2, False, 4.0),
        (2, False, 1.0),
    ],
    # a longer run of the two settings with quality targets (use with --rounds 4)
    "targets": [(2, False, math.inf), (2, False, 8.0)],
}


class EpochQuality(TrainerCallback):
    """Held-out quality after every epoch, with the training time so far (evaluation excluded)."""

    def __init__(self, retriever: ClassifierRetriever, heldout: list) -> None:
        self.retriever, self.heldout = retriever, heldout
        self.curve = [{"epoch": 0, "elapsed_s": 0.0, **_pick(partitions.quality(retriever, heldout))}]
        self.train_s = 0.0
        self._since = 0.0

    def on_train_begin(self, trainer: Trainer, total_steps: int) -> None:
        self._since = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, epoch: int, mean_loss: float) -> None:
        self.train_s += time.perf_counter() - self._since
        scores = partitions.quality(self.retriever, self.heldout)
        self.curve.append({"epoch": epoch + 1, "elapsed_s": round(self.train_s, 2), **_pick(scores)})
        self._since = time.perf_counter()


def centralized_curve(spec: LocalRunSpec, epsilon: float) -> dict:
    """Centralised training on the pooled data, evaluated after every epoch (the clients'
    settings and epoch budget): ``ClassifierRetriever.fit`` without DP, the same set-up under
    DP-SGD otherwise."""
    started = time.perf_counter()
    split = partitions.load_split(spec.dataset)
    config = centralized_config(spec)
    retriever = centralized_retriever(spec)
    retriever.config.train = config.model_copy(update={"epochs": 0})
    retriever.fit(split.corpus)  # untrained (inner-product search): the clients' starting point
    examples = partitions.local_examples(retriever, None, split.feedback)
    setup_s = time.perf_counter() - started
    observer = EpochQuality(retriever, split.heldout)
    if math.isinf(epsilon):
        retriever.config.train = config
        retriever.callbacks.append(observer)
        retriever.fit(split.corpus, queries=split.feedback)  # from scratch, observed per epoch
        spent = math.inf
    else:
        sigma, _, _ = planned_noise(epsilon, 1e-5, math.ceil(len(examples) / config.batch_size), config.epochs, 1)
        assert sigma is not None
        _, ledger = train_round(
            retriever,
            examples,
            config,
            epochs=config.epochs,
            dp=DPParams(sigma, spec.max_grad_norm),
            callbacks=[observer],
        )
        spent = ledger.epsilon(1e-5)
    return {
        "kind": "centralized",
        "epsilon": spent,
        "target_epsilon": epsilon,
        "curve": observer.curve,
        "setup_s": round(setup_s, 2),
        "examples": len(examples),
    }


def _pick(scores: dict) -> dict:
    return {"R@1": float(scores["R@1"]), "MRR@10": float(scores["MRR@10"])}


def federated_curve(spec: LocalRunSpec) -> dict:
    summary = run_local(spec)
    rounds = summary["per_round"]
    start = rounds[0]["elapsed_s"]  # round 0 = evaluation of the initial model, after server setup
    curve = [
        {"round": r["round"], "elapsed_s": round(r["elapsed_s"] - start, 2), "R@1": r["R@1"], "MRR@10": r["MRR@10"]}
        for r in rounds
    ]
    return {
        "kind": "federated",
        "clients": spec.clients,
        "iid": spec.iid,
        "target_epsilon": spec.target_epsilon,
        "epsilon": summary["epsilon"],
        "curve": curve,
        "wall_s": summary["wall_s"],
        "rounds_completed": summary["rounds_completed"],
    }


def fmt(value: object, places: int = 3) -> str:
    """A table cell: — for missing, ∞ for infinite, fixed decimals for floats."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.{places}f}"
    return str(value)


def time_to(curve: list[dict], target: float) -> float | None:
    for point in curve:
        if point["R@1"] >= target - 1e-9:
            return point["elapsed_s"]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        default=str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "python-faq"),
        help="BEIR folder (default: shared/data/python-faq beside the repo)",
    )
    parser.add_argument("--encoder", default="", help="empty: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-query-length", type=int, default=24)
    parser.add_argument("--pseudo-queries", type=int, default=1)
    parser.add_argument("--target-gap", type=float, default=0.02, help="target = centralised best R@1 - gap")
    parser.add_argument("--alt-target", type=float, default=0.90, help="a second, absolute R@1 target")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("--from-json", default=None, help="re-print the table of an earlier results file")
    args = parser.parse_args(argv)
    if args.from_json:
        previous = json.loads(Path(args.from_json).read_text())
        report(previous["runs"], args, previous.get("total_s"), out=None)
        return 0
    logging.basicConfig(level=logging.WARNING)
    base = dict(
        dataset=args.dataset,
        encoder=args.encoder,
        rounds=args.rounds,
        batch_size=args.batch_size,
        max_query_length=args.max_query_length,
        pseudo_queries_per_document=args.pseudo_queries,
        mode="adapter+head",
        centralized=False,
        extra_run_config={"federated-evaluation": False},
    )
    started = time.perf_counter()
    results: list[dict] = []
    epsilons = sorted({e for _, _, e in GRIDS[args.grid]}, reverse=True)
    for eps in epsilons if args.grid == "full" else [math.inf, 8.0]:
        results.append(centralized_curve(LocalRunSpec(clients=1, target_epsilon=eps, **base), eps))
        print(f"centralized ε={eps}: {results[-1]['curve'][-1]}", file=sys.stderr, flush=True)
    for clients, iid, eps in GRIDS[args.grid]:
        spec = LocalRunSpec(
            clients=clients, iid=iid, target_epsilon=eps, dp="client" if math.isfinite(eps) else "none", **base
        )
        results.append(federated_curve(spec))
        print(
            f"FL {clients} {'IID' if iid else 'non-IID'} ε={eps}: {results[-1]['curve'][-1]}",
            file=sys.stderr,
            flush=True,
        )

    report(results, args, round(time.perf_counter() - started, 1), out=Path(args.out))
    return 0


def _num(value):
    return math.inf if value == "inf" else value


def report(results: list[dict], args: argparse.Namespace, total_s: float | None, out: Path | None) -> None:
    for r in results:
        r["epsilon"], r["target_epsilon"] = _num(r["epsilon"]), _num(r["target_epsilon"])
    central = next(r for r in results if r["kind"] == "centralized" and math.isinf(r["target_epsilon"]))
    central_final = central["curve"][-1]["R@1"]
    target = max(p["R@1"] for p in central["curve"]) - args.target_gap
    central_time = time_to(central["curve"], target)
    central_alt = time_to(central["curve"], args.alt_target)
    rows = []
    for r in results:
        final = r["curve"][-1]
        t = time_to(r["curve"], target)
        name = (
            "centralized"
            if r["kind"] == "centralized"
            else f"FL {r['clients']} clients {'IID' if r['iid'] else 'non-IID'}"
        )
        rows.append(
            {
                "setup": name,
                "target_epsilon": r["target_epsilon"],
                "epsilon_spent": r["epsilon"],
                "initial_R@1": r["curve"][0]["R@1"],
                "final_R@1": final["R@1"],
                "final_MRR@10": final["MRR@10"],
                "delta_R@1_vs_centralized": final["R@1"] - central_final,
                "time_to_target_s": t,
                "speedup_vs_centralized": (central_time / t) if (t and central_time) else None,
                "time_to_alt_target_s": time_to(r["curve"], args.alt_target),
                "speedup_alt_target": (central_alt / ta)
                if ((ta := time_to(r["curve"], args.alt_target)) and central_alt)
                else None,
                "wall_s": r.get("wall_s"),
            }
        )
    payload = {
        "args": vars(args),
        "target_R@1": target,
        "alt_target_R@1": args.alt_target,
        "centralized_final_R@1": central_final,
        "rows": rows,
        "runs": results,
        "total_s": total_s,
    }
    if out is not None:
        write_json(out, payload)
    print(
        "| setup | ε target | ε spent | R@1 start | R@1 final | MRR@10 final | ΔR@1 vs central "
        f"| time to R@1≥{target:.3f} (s) | speed-up | time to R@1≥{args.alt_target:.2f} (s) | speed-up | run wall (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['setup']} | {fmt(row['target_epsilon'], 0)} | {fmt(row['epsilon_spent'], 2)} "
            f"| {fmt(row['initial_R@1'])} | "
            f"{fmt(row['final_R@1'])} | {fmt(row['final_MRR@10'])} | {fmt(row['delta_R@1_vs_centralized'])} | "
            f"{fmt(row['time_to_target_s'], 1)} | {fmt(row['speedup_vs_centralized'], 2)} | "
            f"{fmt(row['time_to_alt_target_s'], 1)} | {fmt(row['speedup_alt_target'], 2)} | {fmt(row['wall_s'], 0)} |"
        )
    print(f"\ntarget R@1 = {target:.3f} (centralized best − {args.target_gap}); total {total_s} s")


if __name__ == "__main__":
    sys.exit(main())
