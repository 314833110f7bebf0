"""The ``softcar-fed local`` experiment: a real SuperLink + N SuperNodes on loopback, the app run on a real corpus
split across them, an optional SuperNode crash, and a comparison with centralised training."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field

from softcar import ClassifierRetriever, TrainConfig
from softcar_federated import partitions
from softcar_federated.local_training import DPParams, train_round
from softcar_federated.privacy import planned_noise
from softcar_federated.supervisor import (
    LaunchError,
    LocalFederation,
    config_string,
    flower_executable,
    is_alive,
    read_rounds,
    wait_for,
)

logger = logging.getLogger(__name__)

KEY_METRICS = ("R@1", "MRR@10")
TIMING_KEYS = ("train-s-max", "train-s-sum", "handler-s-max", "handler-s-sum")
"""Per-round client compute (seconds) the server aggregates from the clients' metrics."""


class LocalRunSpec(BaseModel):
    """What ``softcar-fed local`` runs (CLI flags map one to one)."""

    model_config = ConfigDict(extra="forbid")

    clients: int = Field(2, ge=1)
    rounds: int = Field(3, ge=1)
    target_epsilon: float = Field(8.0, gt=0)
    kill_client_at_round: int | None = Field(None, ge=1)
    rejoin: bool = True
    dataset: str
    encoder: str = ""
    mode: str = "adapter+head"
    iid: bool = False
    dp: str = "client"
    strategy: str = "fedavg"
    server_learning_rate: float = 0.0
    server_momentum: float = 0.0
    local_epochs: int = 1
    batch_size: int = 32
    max_query_length: int = 32
    pseudo_queries_per_document: int = 2
    learning_rate: float = 2e-4
    head_learning_rate: float = 2e-3
    max_grad_norm: float = 1.0
    local_parts: str = "adapter+head"
    warm_start: bool = False
    clients_per_round: int = Field(0, ge=0, description="dp='client-level': clients sampled per round; 0: all.")
    round_timeout: float = 300.0
    timeout: float = 1800.0
    centralized: bool = True
    node_workers: bool = True
    """A long-lived worker beside each SuperNode keeps its retriever loaded across rounds."""
    node_threads: int = Field(0, ge=0)
    """CPU threads per SuperNode (0: this machine's cores shared out, at least 1 each)."""

    def threads_per_node(self) -> int:
        return self.node_threads or max(1, (os.cpu_count() or 1) // self.clients)

    work_dir: str | None = None
    extra_run_config: dict[str, Any] = Field(default_factory=dict)

    def run_config(self, output_dir: Path) -> dict[str, Any]:
        min_nodes = max(1, self.clients - (1 if self.kill_client_at_round else 0))
        return {
            "num-server-rounds": self.rounds,
            "mode": self.mode,
            "strategy": self.strategy,
            "server-learning-rate": self.server_learning_rate,
            "server-momentum": self.server_momentum,
            "dp": self.dp,
            "target-epsilon": float(self.target_epsilon),
            "dataset": str(Path(self.dataset).resolve()),
            "encoder": self.encoder,
            "iid": self.iid,
            "local-epochs": self.local_epochs,
            "batch-size": self.batch_size,
            "max-query-length": self.max_query_length,
            "pseudo-queries-per-document": self.pseudo_queries_per_document,
            "learning-rate": self.learning_rate,
            "head-learning-rate": self.head_learning_rate,
            "max-grad-norm": self.max_grad_norm,
            "local-parts": self.local_parts,
            "warm-start": self.warm_start,
            "min-train-nodes": min_nodes,
            "min-available-nodes": min_nodes,
            "round-timeout": self.round_timeout,
            "output-dir": str(output_dir),
            **(
                {"population": self.clients, "clients-per-round": self.clients_per_round or self.clients}
                if self.dp == "client-level"
                else {}
            ),
            **self.extra_run_config,
        }


def _pick(scores: dict | None) -> dict[str, float] | None:
    return None if scores is None else {k: float(scores[k]) for k in KEY_METRICS if k in scores}


def centralized_config(spec: LocalRunSpec) -> TrainConfig:
    """The clients' training settings, for ``rounds × local_epochs`` epochs in one place.

    Query prototypes are off: federated clients train rows by gradient only (seeding rows from
    raw questions would bypass DP), so the baseline does the same.
    """
    return TrainConfig(
        epochs=spec.rounds * spec.local_epochs,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        head_learning_rate=spec.head_learning_rate,
        pseudo_queries_per_document=spec.pseudo_queries_per_document,
        query_prototype_weight=0.0,
        show_progress=False,
    )


def centralized_retriever(spec: LocalRunSpec) -> ClassifierRetriever:
    """An unfitted retriever like the clients' (same encoder, adapter, query length)."""
    return ClassifierRetriever(
        spec.encoder or None, config=centralized_config(spec), max_query_length=spec.max_query_length
    )


def centralized_baseline(spec: LocalRunSpec, epsilon: float = math.inf) -> dict[str, Any]:
    """All deployments' data in one place: ``ClassifierRetriever.fit`` on the pooled documents
    and feedback with the clients' settings. With a finite ``epsilon``, the same training under
    DP-SGD (the pooled data through :func:`~softcar_federated.local_training.train_round`)."""
    started = time.perf_counter()
    split = partitions.load_split(spec.dataset)
    retriever = centralized_retriever(spec)
    config = centralized_config(spec)
    initial = None
    spent = math.inf
    if math.isinf(epsilon):
        retriever.fit(split.corpus, queries=split.feedback)
        examples = len(retriever.training_examples(split.feedback))
    else:
        retriever.fit(split.corpus)  # untrained: inner-product search, like the clients' start
        initial = partitions.quality(retriever, split.heldout)
        pooled = partitions.local_examples(retriever, None, split.feedback)
        batches = math.ceil(len(pooled) / config.batch_size)
        sigma, _, _ = planned_noise(epsilon, 1e-5, batches, config.epochs, 1)
        assert sigma is not None
        _, ledger = train_round(retriever, pooled, config, epochs=config.epochs, dp=DPParams(sigma, spec.max_grad_norm))
        spent, examples = ledger.epsilon(1e-5), len(pooled)
    final = partitions.quality(retriever, split.heldout)
    return {
        "initial": _pick(initial),
        "final": _pick(final),
        "epsilon": spent,
        "examples": examples,
        "epochs": config.epochs,
        "wall_s": round(time.perf_counter() - started, 2),
    }


def _server_summary(output_dir: Path) -> dict[str, Any]:
    return dict(json.loads((output_dir / "server" / "summary.json").read_text(encoding="utf-8")))


def _summary(
    spec: LocalRunSpec, rounds: list[dict], server_summary: dict[str, Any], killed: dict[str, Any] | None, wall_s: float
) -> dict[str, Any]:
    """The JSON summary of a finished run, from the server's round log and summary."""
    first, last = rounds[0], rounds[-1]
    if killed is not None and killed["restarted"]:
        back = [
            r["round"] for r in rounds if r["round"] > killed["round"] and len(r.get("accepted", [])) == spec.clients
        ]
        killed["rejoined_at_round"] = back[0] if back else None
    epsilon = last.get("epsilon")
    summary: dict[str, Any] = {
        "rounds_completed": sum(1 for r in rounds if r["round"] > 0),
        "clients": spec.clients,
        "mode": spec.mode,
        "iid": spec.iid,
        "dp": spec.dp,
        "target_epsilon": spec.target_epsilon,
        "epsilon": float(epsilon) if isinstance(epsilon, (int, float)) else (math.inf if epsilon == "inf" else epsilon),
        "delta": last.get("delta"),
        "initial": _pick(first.get("server_eval")),
        # the federation's output: the best global model the server kept (by its held-out evaluation)
        "final": _pick((server_summary.get("best") or {}).get("server_eval") or last.get("server_eval")),
        "final_round": (server_summary.get("best") or {}).get("round"),
        "last_round": _pick(last.get("server_eval")),
        "warm_start_s": server_summary.get("warm_start_s"),
        "final_federated_eval": _pick(last.get("federated_eval")),
        "per_round": [
            {
                "round": r["round"],
                "elapsed_s": r["elapsed_s"],
                **(_pick(r.get("server_eval")) or {}),
                "epsilon": r.get("epsilon"),
                "accepted": len(r.get("accepted", [])),
                "failed": len(r.get("failed", [])),
                "rejected": len(r.get("rejected", [])),
                "not_released": r.get("not_released"),
                "train_phase_s": r.get("train_phase_s"),
                **{k: (r.get("train") or {}).get(k) for k in TIMING_KEYS},
            }
            for r in rounds
        ],
        "killed": killed,
        "wall_s": round(wall_s, 2),
    }
    return summary


def run_local(spec: LocalRunSpec) -> dict[str, Any]:
    """Start everything, run, optionally crash and restart one SuperNode, stop everything."""
    started = time.perf_counter()
    with LocalFederation(spec.work_dir, node_threads=spec.threads_per_node()) as fed:
        output_dir = fed.work_dir / "output"
        fed.start_superlink()
        for i in range(spec.clients):
            fed.start_node(
                i,
                {"partition-id": i, "num-partitions": spec.clients, "work-dir": str(output_dir / f"node-{i}")},
                worker=spec.node_workers,
            )
        run = fed.run(spec.run_config(output_dir))
        killed: dict[str, Any] | None = None
        deadline = time.monotonic() + spec.timeout
        while run.process.poll() is None:
            if time.monotonic() > deadline:
                raise LaunchError(f"run did not finish within {spec.timeout:.0f}s; logs in {fed.logs}")
            rounds = read_rounds(output_dir)
            done = max((r["round"] for r in rounds), default=-1)
            k = spec.kill_client_at_round
            if k is not None and killed is None and done >= k - 1:
                # Round k is in flight (its predecessor is logged): crash the last SuperNode now.
                time.sleep(2.0)
                victim = spec.clients - 1
                fed.kill_node(victim)
                killed = {"node": victim, "round": k, "restarted": False, "rejoined_at_round": None}
                if spec.rejoin:  # same node config and work dir: it keeps its privacy ledger
                    time.sleep(1.0)
                    fed.start_node(victim)
                    killed["restarted"] = True
            time.sleep(0.5)
        if run.process.returncode != 0:
            raise LaunchError(f"flwr run failed ({run.process.returncode}):\n{fed.tail(run)}")
        # `flwr run --stream` returns when the run ends; the ServerApp writes its summary last.
        wait_for(lambda: (output_dir / "server" / "summary.json").is_file(), 60, what="server summary")
        rounds = read_rounds(output_dir)
        server_summary = _server_summary(output_dir)
        fl_wall = time.perf_counter() - started
    summary = _summary(spec, rounds, server_summary, killed, fl_wall)
    if spec.centralized:
        summary["centralized"] = centralized_baseline(spec)
    return summary


APP_DIR = Path(__file__).resolve().parents[1]


def _processes_mentioning(folder: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            text = " ".join(process.info["cmdline"] or []) + " " + (process.info["cwd"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(folder) in text and process.pid != os.getpid():
            found.append(process)
    return found


def run_simulation(spec: LocalRunSpec) -> dict[str, Any]:
    """The same app on Flower's simulation engine (``flwr run federated local-sim``) with
    ``spec.clients`` virtual SuperNodes: many clients on one machine (client-level DP needs
    16-64). A private ``FLWR_HOME`` identifies the managed SuperLink that ``flwr run`` leaves
    behind; it and everything else started under it are stopped before returning."""
    started = time.perf_counter()
    work = Path(spec.work_dir) if spec.work_dir else Path(tempfile.mkdtemp(prefix="softcar-sim-"))
    home = work / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text((APP_DIR / "flwr-home" / "config.toml").read_text(encoding="utf-8"))
    output_dir = work / "output"
    run_config = spec.run_config(output_dir)
    run_config["min-train-nodes"] = run_config["min-available-nodes"] = spec.clients_per_round or spec.clients
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        HF_HUB_OFFLINE="1",
        PATH=f"{Path(flower_executable('flwr')).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    command = [flower_executable("flwr"), "run", str(APP_DIR), "local-sim", "--stream"]
    command += ["--federation-config", f"num-supernodes={spec.clients}", "--run-config", config_string(run_config)]
    log_path = work / "flwr-run.log"
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=spec.timeout)
        if result.returncode != 0:
            raise LaunchError(f"flwr run (simulation) failed ({result.returncode}); log: {log_path}")
        wait_for(lambda: (output_dir / "server" / "summary.json").is_file(), 60, what="server summary")
    finally:
        for process in _processes_mentioning(home):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        wait_for(lambda: not any(is_alive(p.pid) for p in _processes_mentioning(home)), 30, what="simulation exit")
    rounds = read_rounds(output_dir)
    return _summary(spec, rounds, _server_summary(output_dir), None, time.perf_counter() - started)
