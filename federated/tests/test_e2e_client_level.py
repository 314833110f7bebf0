"""Client-level DP end to end on Flower's simulation engine: 16 virtual SuperNodes, 8 sampled per
round, updates clipped by the clients' mod and noised by the server; the ε in the round log is
an independent Opacus RDP accountant's at sample rate 8/16 over the released rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import processes_in
from opacus.accountants import RDPAccountant

pytestmark = pytest.mark.slow


def test_client_level_dp_on_the_simulation_engine(tiny_encoder, tiny_dataset, tmp_path):
    app = Path(__file__).resolve().parents[1]
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text((app / "flwr-home" / "config.toml").read_text())
    output = tmp_path / "output"
    run_config = " ".join(
        [
            f'encoder="{tiny_encoder}"',
            f'dataset="{tiny_dataset}"',
            'mode="adapter+head"',
            "iid=true",
            'dp="client-level"',
            "population=16",
            "clients-per-round=8",
            "target-epsilon=8.0",
            "target-delta=0.01",
            "central-clipping-norm=0.5",
            "num-server-rounds=2",
            "federated-evaluation=false",
            "batch-size=8",
            "max-query-length=16",
            "pseudo-queries-per-document=1",
            f'output-dir="{output}"',
        ]
    )
    flwr = Path(sys.executable).with_name("flwr")
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PATH=f"{flwr.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    try:
        result = subprocess.run(
            [
                str(flwr),
                "run",
                str(app),
                "local-sim",
                "--stream",
                "--federation-config",
                "num-supernodes=16",
                "--run-config",
                run_config,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-4000:]
        assert "fixedclipping_mod" in log or "Received 8 results" in log, log[-4000:]
        rounds = json.loads((output / "server" / "rounds.json").read_text())["rounds"]
    finally:
        for pid in processes_in(home):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    trained = [r for r in rounds if r["round"] > 0]
    assert len(trained) == 2
    for entry in trained:
        assert entry["train"]["clients"] == 8 and len(entry["accepted"]) == 8  # exactly m sampled
        assert entry["not_released"] is None
        assert entry["train"]["train-s-max"] > 0 and entry["train_phase_s"] > 0
    summary = json.loads((output / "server" / "summary.json").read_text())
    assert summary["rounds_with_updates"] == 2
    from softcar_federated.config import FedConfig
    from softcar_federated.strategy import client_level_plan

    plan = client_level_plan(
        FedConfig(
            dp="client-level",
            population=16,
            clients_per_round=8,
            target_epsilon=8.0,
            target_delta=0.01,
            num_server_rounds=2,
        )
    )
    replay = RDPAccountant()
    for _ in range(2):
        replay.step(noise_multiplier=plan.noise_multiplier, sample_rate=8 / 16)
    assert trained[-1]["epsilon"] == pytest.approx(replay.get_epsilon(0.01), rel=1e-6)
    assert trained[-1]["epsilon"] <= 8.0 * 1.0001
    time.sleep(1.0)
    assert processes_in(home) == [], "processes left running"


def test_run_simulation_summary(tiny_encoder, tiny_dataset, tmp_path):
    """``local_experiment.run_simulation`` (the benchmark's many-client engine): 4 virtual nodes,
    client-level DP with 2 per round; it returns the summary and leaves no process behind."""
    from softcar_federated.local_experiment import LocalRunSpec, run_simulation

    spec = LocalRunSpec(
        clients=4,
        clients_per_round=2,
        rounds=1,
        dp="client-level",
        target_epsilon=8.0,
        dataset=str(tiny_dataset),
        encoder=tiny_encoder,
        iid=True,
        batch_size=8,
        max_query_length=16,
        pseudo_queries_per_document=1,
        centralized=False,
        work_dir=str(tmp_path / "sim"),
        timeout=500,
        extra_run_config={"federated-evaluation": False, "target-delta": 0.01},
    )
    summary = run_simulation(spec)
    assert summary["rounds_completed"] == 1
    assert summary["per_round"][1]["accepted"] == 2 and summary["per_round"][1]["not_released"] is None
    assert 0 < summary["epsilon"] <= 8.0 * 1.0001
    assert summary["final"]["R@1"] >= summary["initial"]["R@1"]
    time.sleep(1.0)
    assert processes_in(tmp_path / "sim" / "flwr-home") == [], "processes left running"
