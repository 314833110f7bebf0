"""Benchmark: federated vs centralised softcar fine-tuning, DP recipes side by side, and time to quality.

Every FL run is a real federation: a SuperLink + SuperNodes on loopback (``softcar-fed local``
machinery) or, for many clients, Flower's simulation engine. Centralised = ``ClassifierRetriever.fit``
on the pooled data with the clients' settings (``local_experiment.centralized_config``), evaluated
after every epoch. DP rows are unseeded on purpose (noise must not be replayable) and repeated;
the table gives mean ± spread (half the range) over the repeats.

Time to quality, for each FL run: the R@1 it reached (its kept model) or the centralised best,
whichever is lower, is the target; then
  (a) wall  = real seconds from the first round's start until the server's evaluation first
              reaches the target (this machine: clients run one after another on 2 shared cores);
  (b) par   = simulated parallel time: per round, the slowest client's measured time in its
              ClientApp ``train`` (model load + training) plus the round's communication, measured
              as the part of the server's wait for the replies that the clients' ``train`` times do
              not explain (wait − their sum when they ran one after another, wait − the slowest
              when they overlapped): transport, serialisation, ClientApp start-up, scheduling;
              an upper bound on communication;
  (c) comp  = per round, the slowest client's training time alone (no load, no communication);
and the centralised training time to the same target, and the whole centralised fit's time to it
(model load, corpus encoding and indexing included, as (b) includes each client's first-round
build). Speed-up = centralised / FL.

    python federated/benchmarks/bench_federated.py --grid small --out federated/benchmarks/results-utility-small.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from softcar import ClassifierRetriever, Trainer, TrainerCallback, write_json
from softcar_federated import partitions
from softcar_federated.local_experiment import (
    LocalRunSpec,
    centralized_config,
    centralized_retriever,
    run_local,
    run_simulation,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class Row(BaseModel):
    """One benchmark row: an FL setting, repeated ``repeats`` times."""

    label: str
    clients: int = 4
    epsilon: float = math.inf
    dp: str = "none"
    local_parts: str = "adapter+head"
    warm_start: bool = False
    batch_size: int = 32
    max_grad_norm: float = 1.0
    local_epochs: int = 1
    head_learning_rate: float = 2e-3
    strategy: str = "fedavg"
    server_learning_rate: float = 0.0
    federated_evaluation: bool = False
    """Also report each deployment's own serving quality (global model + its local question rows)."""
    engine: str = "deployment"
    node_workers: bool = False
    """deployment engine: a long-lived worker per SuperNode (``softcar-fed worker``; off in the
    rows measured before it existed, so that re-running them measures the same thing)."""
    clients_per_round: int = 0
    delta: float = 1e-5
    repeats: int = 1


NODP = Row(label="FL no DP")
EPS8 = dict(epsilon=8.0, dp="client")
FEDAVGM4 = dict(strategy="fedavgm", server_learning_rate=4.0, engine="simulation")
DP8_HEAD_WARM = dict(local_parts="head", warm_start=True, **EPS8)


def _client_level_row(n: int, repeats: int) -> Row:
    """Client-level DP-FedAvg over ``n`` simulated MiniLM deployments, half of them per round."""
    return Row(
        label=f"client-level DP ε=8, {n} clients, {n // 2} per round, served by each deployment",
        clients=n,
        clients_per_round=n // 2,
        epsilon=8.0,
        dp="client-level",
        local_parts="head",
        warm_start=True,
        delta=1e-2,
        max_grad_norm=0.1,
        engine="simulation",
        federated_evaluation=True,
        repeats=repeats,
    )


GRIDS: dict[str, list[Row]] = {
    "small": [
        NODP,
        Row(label="DP-SGD ε=8 (adapter+head, B=32, C=1)", **EPS8),  # type: ignore[arg-type]
        Row(label="DP-SGD ε=8 head only", local_parts="head", **EPS8),  # type: ignore[arg-type]
    ],
    # the rows "small" does not have (merge the two result files with --from-json a.json b.json)
    "utility": [
        Row(
            label="client-level DP ε=8, 16 clients, 8 per round (simulation)",
            clients=16,
            clients_per_round=8,
            epsilon=8.0,
            dp="client-level",
            local_parts="head",
            delta=1e-2,
            max_grad_norm=0.1,
            engine="simulation",
        ),
        Row(
            label="DP-SGD ε=8 head only, large batch B=128, C=0.1, 2 local epochs",
            local_parts="head",
            batch_size=128,
            max_grad_norm=0.1,
            local_epochs=2,
            **EPS8,  # type: ignore[arg-type]
        ),
        Row(label="DP-SGD ε=8 head only + warm start", local_parts="head", warm_start=True, repeats=3, **EPS8),  # type: ignore[arg-type]
        Row(
            label="DP-SGD ε=1 head only + warm start",
            local_parts="head",
            warm_start=True,
            repeats=3,
            epsilon=1.0,
            dp="client",
        ),
    ],
    # chatterbot_qa has headroom (python-faq starts at 0.945 R@1, centralised ends at 0.956)
    "chatterbot": [
        NODP,
        Row(label="DP-SGD ε=8 (adapter+head, B=32, C=1)", **EPS8),  # type: ignore[arg-type]
        Row(label="DP-SGD ε=8 head only", local_parts="head", **EPS8),  # type: ignore[arg-type]
        Row(label="DP-SGD ε=8 head only + warm start", local_parts="head", warm_start=True, **EPS8),  # type: ignore[arg-type]
        Row(
            label="DP-SGD ε=8 head only, large batch B=128, C=0.1, 2 local epochs",
            local_parts="head",
            batch_size=128,
            max_grad_norm=0.1,
            local_epochs=2,
            **EPS8,  # type: ignore[arg-type]
        ),
        Row(label="DP-SGD ε=1 head only + warm start", local_parts="head", warm_start=True, epsilon=1.0, dp="client"),
    ],
    # FedAvgM with a server step of 4 (= clients): the mean of 4 non-IID clients' updates gives
    # each document's head row a quarter of its owner's step (measured in-process first)
    "fedavgm": [
        Row(label="FL no DP, FedAvg", engine="simulation"),
        Row(label="FL no DP, FedAvgM η_s=4", **FEDAVGM4),  # type: ignore[arg-type]
        Row(label="FL no DP, FedAvgM η_s=4 (deployment)", **{**FEDAVGM4, "engine": "deployment"}),  # type: ignore[arg-type]
        Row(label="DP-SGD ε=8 head only + warm start, FedAvgM η_s=4", repeats=3, **FEDAVGM4, **DP8_HEAD_WARM),  # type: ignore[arg-type]
    ],
    # per-round overhead in deployment mode: a fresh ClientApp process per message, with and
    # without a long-lived worker per SuperNode; the simulation engine (long-lived actors) beside
    "workers": [
        Row(label="FL no DP, FedAvgM η_s=4 (simulation)", **FEDAVGM4),  # type: ignore[arg-type]
        Row(label="FL no DP, FedAvgM η_s=4 (deployment)", **{**FEDAVGM4, "engine": "deployment"}),  # type: ignore[arg-type]
        Row(
            label="FL no DP, FedAvgM η_s=4 (deployment + node workers)",
            node_workers=True,
            **{**FEDAVGM4, "engine": "deployment"},  # type: ignore[arg-type]
        ),
    ],
    # each deployment's served quality: the global model + its own question rows (never sent)
    "served": [
        Row(label="FL no DP, FedAvgM η_s=4, served by each deployment", federated_evaluation=True, **FEDAVGM4),  # type: ignore[arg-type]
        Row(
            label="DP-SGD ε=8 head only + warm start, FedAvgM η_s=4, served by each deployment",
            federated_evaluation=True,
            repeats=3,
            **FEDAVGM4,  # type: ignore[arg-type]
            **DP8_HEAD_WARM,  # type: ignore[arg-type]
        ),
        Row(
            label="DP-SGD ε=1 head only + warm start, FedAvgM η_s=4, served by each deployment",
            federated_evaluation=True,
            repeats=3,
            **FEDAVGM4,  # type: ignore[arg-type]
            **{**DP8_HEAD_WARM, "epsilon": 1.0},  # type: ignore[arg-type]
        ),
    ],
    # client-level (user-level) DP with many deployments per round on MiniLM: the noise on the
    # mean shrinks with the clients per round; each deployment still serves with its own rows
    "client-level": [_client_level_row(n, repeats=3 if n < 64 else 1) for n in (16, 32, 64)],  # 64: 8 min a run
    # the runs that bring "client-level" to n = 3 (merged with --from-json: the labels match)
    "client-level-repeats": [_client_level_row(16, repeats=1), _client_level_row(64, repeats=2)],
    # two more of each DP headline row (merged with "chatterbot": n = 3)
    "chatterbot-repeats": [
        Row(label="DP-SGD ε=8 head only + warm start", local_parts="head", warm_start=True, repeats=2, **EPS8),  # type: ignore[arg-type]
        Row(
            label="DP-SGD ε=1 head only + warm start",
            local_parts="head",
            warm_start=True,
            repeats=2,
            epsilon=1.0,
            dp="client",
        ),
    ],
}


class EpochQuality(TrainerCallback):
    """Held-out quality after every epoch, with the training time so far (``elapsed_s``) and the
    whole fit's time so far (``fit_s``: model load, encoding the corpus, indexing, training),
    evaluation excluded from both."""

    def __init__(self, retriever: ClassifierRetriever, heldout: list, load_s: float = 0.0) -> None:
        self.retriever, self.heldout = retriever, heldout
        self.curve = [{"epoch": 0, "elapsed_s": 0.0, **_pick(partitions.quality(retriever, heldout))}]
        self.train_s = 0.0
        # the whole fit starts now (after the start's evaluation) plus the model load before it
        self.fit_started = time.perf_counter() - load_s
        self._since = 0.0
        self._evaluating_s = 0.0

    def on_train_begin(self, trainer: Trainer, total_steps: int) -> None:
        self._since = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, epoch: int, mean_loss: float) -> None:
        now = time.perf_counter()
        self.train_s += now - self._since
        fit_s = now - self.fit_started - self._evaluating_s
        scores = partitions.quality(self.retriever, self.heldout)
        point = {"epoch": epoch + 1, "elapsed_s": round(self.train_s, 2), "fit_s": round(fit_s, 2), **_pick(scores)}
        self.curve.append(point)
        self._since = time.perf_counter()
        self._evaluating_s += self._since - now


def _pick(scores: dict) -> dict:
    return {"R@1": float(scores["R@1"]), "MRR@10": float(scores["MRR@10"])}


def centralized_curve(spec: LocalRunSpec) -> dict:
    """``ClassifierRetriever.fit`` on the pooled documents + feedback (no DP), from the same
    untrained start as the clients, evaluated after every epoch."""
    split = partitions.load_split(spec.dataset)
    config = centralized_config(spec)
    started = time.perf_counter()
    retriever = centralized_retriever(spec)
    load_s = time.perf_counter() - started
    retriever.config.train = config.model_copy(update={"epochs": 0})
    retriever.fit(split.corpus)  # untrained (inner-product search): the clients' starting point
    # the whole fit's clock counts the model load too, as a client's first round does
    observer = EpochQuality(retriever, split.heldout, load_s=load_s)
    retriever.config.train = config
    retriever.callbacks.append(observer)
    retriever.fit(split.corpus, queries=split.feedback)
    return {"kind": "centralized", "epochs": config.epochs, "curve": observer.curve}


def federated_run(spec: LocalRunSpec, engine: str) -> dict:
    summary = run_simulation(spec) if engine == "simulation" else run_local(spec)
    rounds = summary["per_round"]
    start = rounds[0]["elapsed_s"]  # round 0 = evaluation of the initial model, after server setup
    curve = []
    par = comp = 0.0
    for r in rounds:
        if r["round"] > 0:
            handler_max, handler_sum = r.get("handler-s-max") or 0.0, r.get("handler-s-sum") or 0.0
            phase = r.get("train_phase_s") or 0.0
            # the server's wait that the clients' train calls do not explain: clients one after
            # another → phase − Σ; clients overlapping on the shared cores → phase − max
            comm = phase - handler_sum if handler_sum <= phase else phase - handler_max
            par += handler_max + max(comm, 0.0)
            comp += r.get("train-s-max") or 0.0
        curve.append(
            {
                "round": r["round"],
                "wall_s": round(r["elapsed_s"] - start, 2),
                "parallel_s": round(par, 2),
                "compute_s": round(comp, 2),
                "R@1": r.get("R@1"),
                "MRR@10": r.get("MRR@10"),
                "epsilon": r.get("epsilon"),
                "accepted": r.get("accepted"),
                "not_released": r.get("not_released"),
                "raw": {
                    k: r.get(k)
                    for k in ("train_phase_s", "train-s-max", "train-s-sum", "handler-s-max", "handler-s-sum")
                },
            }
        )
    return {"summary": {k: v for k, v in summary.items() if k != "per_round"}, "curve": curve}


def first_time(curve: list[dict], target: float, key: str) -> float | None:
    for point in curve:
        if point["R@1"] is not None and point["R@1"] >= target - 1e-9:
            return float(point[key])
    return None


def mean_spread(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (max(values) - min(values)) / 2


def fmt(value: object, places: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.{places}f}"
    return str(value)


def pm(mean: float | None, spread: float | None, n: int, places: int = 3) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{places}f} ± {spread:.{places}f}" if n > 1 else f"{mean:.{places}f}"


def summarise(dataset: str, central: dict, runs: list[tuple[Row, list[dict]]]) -> list[dict]:
    central_best = max(p["R@1"] for p in central["curve"])
    central_final = central["curve"][-1]["R@1"]

    def nodp_final(of: Row) -> float | None:
        """Final R@1 of the no-DP row with the same aggregation (else the first no-DP row)."""
        plain = [(row, r) for row, r in runs if row.dp == "none" and r]
        same = [
            r for row, r in plain if (row.strategy, row.server_learning_rate) == (of.strategy, of.server_learning_rate)
        ]
        chosen = same[0] if same else (plain[0][1] if plain else None)
        return statistics.fmean(run["summary"]["final"]["R@1"] for run in chosen) if chosen else None

    table = []
    for row, reps in runs:
        reference = nodp_final(row)
        finals = [run["summary"]["final"]["R@1"] for run in reps]
        lasts = [run["summary"]["last_round"]["R@1"] for run in reps]
        mrrs = [run["summary"]["final"]["MRR@10"] for run in reps]
        eps = [float(run["summary"]["epsilon"]) for run in reps]
        starts = [run["summary"]["initial"]["R@1"] for run in reps]
        timing: dict[str, list[float]] = {"wall": [], "parallel": [], "compute": [], "central": [], "central_fit": []}
        for run in reps:
            # the quality both reached; no time to quality when FL did not improve on its start
            target = min(run["summary"]["final"]["R@1"], central_best)
            if target <= run["summary"]["initial"]["R@1"] + 1e-9:
                continue
            times = {k: first_time(run["curve"], target, f"{k}_s") for k in ("wall", "parallel", "compute")}
            times["central"] = first_time(central["curve"], target, "elapsed_s")
            if all("fit_s" in point for point in central["curve"][1:]):  # recorded since 2026-12-03
                times["central_fit"] = first_time(central["curve"], target, "fit_s")
            for k, v in times.items():
                if v is not None:
                    timing[k].append(v)
        served = [
            run["summary"]["final_federated_eval"]["R@1"] for run in reps if run["summary"].get("final_federated_eval")
        ]
        f_mean, f_spread = mean_spread(finals)
        entry: dict[str, Any] = {
            "dataset": dataset,
            "setup": row.label,
            "row": row.model_dump(),
            "n": len(reps),
            "target_epsilon": row.epsilon,
            "epsilon_spent": mean_spread(eps)[0] if row.dp != "none" else math.inf,
            "delta": row.delta,
            "R@1_start": mean_spread(starts),
            "R@1_final": (f_mean, f_spread),
            "R@1_last_round": mean_spread(lasts),
            "R@1_served_last_round": mean_spread(served),
            "MRR@10_final": mean_spread(mrrs),
            "delta_vs_centralized": None if f_mean is None else f_mean - central_final,
            "delta_vs_fl_nodp": None if f_mean is None or reference is None else f_mean - reference,
            "time_wall_s": mean_spread(timing["wall"])[0],
            "time_parallel_s": mean_spread(timing["parallel"])[0],
            "time_compute_s": mean_spread(timing["compute"])[0],
            "time_centralized_s": mean_spread(timing["central"])[0],
            "time_centralized_fit_s": mean_spread(timing["central_fit"])[0],
        }
        for k in ("wall", "parallel", "compute"):
            t, c = entry[f"time_{k}_s"], entry["time_centralized_s"]
            entry[f"speedup_{k}"] = (c / t) if (t and c) else None
        t, c = entry["time_parallel_s"], entry["time_centralized_fit_s"]
        entry["speedup_parallel_vs_fit"] = (c / t) if (t and c) else None
        table.append(entry)
    return table


def print_table(central: dict[str, dict], rows: list[dict]) -> None:
    for dataset, curve in central.items():
        c = curve["curve"]
        print(
            f"centralised fit on {dataset}: R@1 {c[0]['R@1']:.3f} → {c[-1]['R@1']:.3f} (best "
            f"{max(p['R@1'] for p in c):.3f}) in {curve['epochs']} epochs, {c[-1]['elapsed_s']:.1f} s training"
        )
    print(
        "\n| data | setup | n | ε (δ) | R@1 start | R@1 final (kept) | R@1 last round | R@1 served | MRR@10 "
        "| Δ vs central | Δ vs FL no-DP | (a) wall s | (b) parallel s | (c) compute s | central s "
        "| speed-up a / b / c | central whole fit s | speed-up b vs whole fit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["n"]
        eps = "∞" if math.isinf(r["epsilon_spent"]) else f"{r['epsilon_spent']:.2f} ({r['delta']:g})"
        speed = " / ".join(fmt(r[f"speedup_{k}"], 2) for k in ("wall", "parallel", "compute"))
        print(
            f"| {r['dataset']} | {r['setup']} | {n} | {eps} | {pm(*r['R@1_start'], n)} | {pm(*r['R@1_final'], n)} "
            f"| {pm(*r['R@1_last_round'], n)} | {pm(*r.get('R@1_served_last_round', (None, None)), n)} "
            f"| {pm(*r['MRR@10_final'], n)} | {fmt(r['delta_vs_centralized'])} "
            f"| {fmt(r['delta_vs_fl_nodp'])} | {fmt(r['time_wall_s'], 1)} | {fmt(r['time_parallel_s'], 1)} "
            f"| {fmt(r['time_compute_s'], 1)} | {fmt(r['time_centralized_s'], 1)} | {speed} "
            f"| {fmt(r.get('time_centralized_fit_s'), 1)} | {fmt(r.get('speedup_parallel_vs_fit'), 2)} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED / "python-faq"), help="BEIR folder")
    parser.add_argument("--dataset-name", default="python-faq")
    parser.add_argument("--encoder", default="", help="empty: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-query-length", type=int, default=24)
    parser.add_argument("--pseudo-queries", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=0, help="override every row's repeats (0: the grid's)")
    parser.add_argument(
        "--runs-only", action="store_true", help="no centralised curve, no table: FL runs only (merge them later)"
    )
    parser.add_argument("--out", default=None, help="results JSON (default: results-<grid>.json beside this script)")
    parser.add_argument(
        "--from-json", nargs="+", default=None, help="re-print (and merge) earlier results files of one dataset"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        files = [json.loads(Path(f).read_text()) for f in args.from_json]
        central = files[0]["centralized"]
        grouped: dict[str, tuple[Row, list[dict]]] = {}
        for f in files:  # the same row in several files: one row, all its repeats
            for r in f["runs"]:
                grouped.setdefault(r["row"]["label"], (Row(**r["row"]), []))[1].extend(r["runs"])
        merged = list(grouped.values())
        name = next(iter(central))
        rows = summarise(name, central[name], merged)
        print_table(central, rows)
        if args.out:
            write_json(Path(args.out), {"merged_from": args.from_json, "centralized": central, "rows": rows})
        return 0
    logging.basicConfig(level=logging.WARNING)
    started, load_before = time.perf_counter(), os.getloadavg()
    base: dict[str, Any] = dict(
        dataset=args.dataset,
        encoder=args.encoder,
        rounds=args.rounds,
        max_query_length=args.max_query_length,
        pseudo_queries_per_document=args.pseudo_queries,
        mode="adapter+head",
        centralized=False,
        extra_run_config={"federated-evaluation": False},
    )
    out = Path(args.out or Path(__file__).with_name(f"results-{args.grid}.json"))
    runs: list[tuple[Row, list[dict]]] = []
    failures: list[dict] = []

    def save(**extra: Any) -> dict:
        payload = {
            "args": vars(args),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": "2 CPU cores shared with other developers' jobs (load average recorded), no GPU",
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "runs": [{"row": row.model_dump(), "runs": reps} for row, reps in runs],
            "failures": failures,
            "total_s": round(time.perf_counter() - started, 1),
            **extra,
        }
        write_json(out, payload)  # after every run: an interrupted grid keeps what it measured
        return payload

    central: dict | None = None
    if not args.runs_only:
        central = centralized_curve(LocalRunSpec(clients=1, target_epsilon=math.inf, **base))
        print(f"centralized: {central['curve'][-1]}", file=sys.stderr, flush=True)
    for row in GRIDS[args.grid]:
        reps: list[dict] = []
        runs.append((row, reps))
        for _ in range(args.repeats or row.repeats):
            extra = dict(
                base["extra_run_config"],
                **{"target-delta": row.delta, "federated-evaluation": row.federated_evaluation},
            )
            spec = LocalRunSpec(
                clients=row.clients,
                target_epsilon=row.epsilon,
                dp=row.dp,
                local_parts=row.local_parts,
                warm_start=row.warm_start,
                batch_size=row.batch_size,
                max_grad_norm=row.max_grad_norm,
                local_epochs=row.local_epochs,
                head_learning_rate=row.head_learning_rate,
                strategy=row.strategy,
                server_learning_rate=row.server_learning_rate,
                clients_per_round=row.clients_per_round,
                node_workers=row.node_workers,
                **{**base, "extra_run_config": extra},
            )
            try:
                reps.append(federated_run(spec, row.engine))
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
                failures.append({"row": row.label, "error": repr(exc)})
                print(f"{row.label}: FAILED {exc!r}", file=sys.stderr, flush=True)
                continue
            print(f"{row.label}: {reps[-1]['summary']['final']} ε={reps[-1]['summary']['epsilon']}", file=sys.stderr)
            save(centralized={args.dataset_name: central} if central else None)
        if not reps:
            runs.pop()
    if central is None:
        save()
        return 0
    rows = summarise(args.dataset_name, central, runs)
    payload = save(centralized={args.dataset_name: central}, rows=rows)
    print_table(payload["centralized"], rows)
    print(f"\ntotal {payload['total_s']} s; load average {load_before} → {payload['load_average_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
