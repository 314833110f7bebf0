"""End-to-end on a real ``flower-superlink`` and real ``flower-supernode`` processes (loopback
only, free ports, bounded time; every process started is stopped and checked gone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import processes_in

from softcar import ClassifierRetriever
from softcar_federated.supervisor import LocalFederation, is_alive, read_rounds, wait_for

pytestmark = pytest.mark.slow


def test_cli_local_kill_and_rejoin(tiny_encoder, tiny_dataset, tmp_path):
    work = tmp_path / "fed"
    command = [
        sys.executable,
        "-m",
        "softcar_federated.cli",
        "local",
        "--clients",
        "2",
        "--rounds",
        "2",
        "--target-epsilon",
        "8",
        "--kill-client-at-round",
        "1",
        "--dataset",
        str(tiny_dataset),
        "--encoder",
        tiny_encoder,
        "--batch-size",
        "8",
        "--max-query-length",
        "16",
        "--work-dir",
        str(work),
        "--timeout",
        "400",
        "--json",
    ]
    started = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=480, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rounds_completed"] == 2 and summary["clients"] == 2
    assert 0 < summary["epsilon"] <= 8.0 + 1e-6 and summary["delta"] == 1e-5
    for key in ("initial", "final", "centralized"):
        assert summary[key] is not None
    assert set(summary["final"]) == {"R@1", "MRR@10"}
    assert set(summary["centralized"]["final"]) == {"R@1", "MRR@10"}
    per_round = {r["round"]: r for r in summary["per_round"]}
    assert per_round[1]["failed"] == 1 and per_round[1]["accepted"] == 1  # the crash did not stop round 1
    assert summary["killed"]["rejoined_at_round"] == 2 and per_round[2]["accepted"] == 2  # restarted node is back
    server = work / "output" / "server"
    assert (server / "rounds.png").stat().st_size > 1000
    assert json.loads((server / "rounds.json").read_text())["rounds"][-1]["round"] == 2
    ClassifierRetriever.load(server / "global" / "latest")  # a valid softcar checkpoint
    ClassifierRetriever.load(server / "global" / "best")  # the kept model: never below the start
    assert summary["final"]["R@1"] >= summary["initial"]["R@1"] and summary["final_round"] in (0, 1, 2)
    time.sleep(1.0)
    assert processes_in(work) == [], "processes left running"
    assert time.monotonic() - started < 480


def test_tls_auth_and_poisoned_update(tiny_encoder, tiny_dataset, tmp_path, tls_files, supernode_keys):
    output = tmp_path / "out"
    work = tmp_path / "fed"
    private, public = supernode_keys
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    second_private = tmp_path / "node2_key"
    key = ec.generate_private_key(ec.SECP384R1())
    second_private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    (tmp_path / "node2_key.pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with LocalFederation(work, tls=tls_files, supernode_auth=True) as fed:
        fed.start_superlink()
        fed.register_node_key(0, private, public)
        fed.register_node_key(1, second_private, tmp_path / "node2_key.pub")
        fed.start_node(0, {"partition-id": 0, "num-partitions": 2})
        fed.start_node(1, {"partition-id": 1, "num-partitions": 2, "poison": "nan"})
        run = fed.run(
            {
                "num-server-rounds": 1,
                "encoder": tiny_encoder,
                "dataset": str(tiny_dataset),
                "output-dir": str(output),
                "min-train-nodes": 2,
                "min-available-nodes": 2,
                "batch-size": 8,
                "max-query-length": 16,
                "federated-evaluation": False,
                "round-timeout": 120.0,
            }
        )
        run.process.wait(timeout=300)
        assert run.process.returncode == 0, fed.tail(run)
        wait_for(lambda: (output / "server" / "summary.json").is_file(), 60, what="summary")
        pids = fed.all_pids()
        rounds = read_rounds(output)
        logs = "".join(p.read_text(errors="replace") for p in fed.logs.glob("superlink-*.log"))
    assert "TLS disabled" not in logs
    last = rounds[-1]
    assert last["round"] == 1 and len(last["accepted"]) == 1
    assert len(last["rejected"]) == 1 and "NaN" in last["rejected"][0]["reason"]
    assert last["rejected"][0]["key"].startswith("adapter.")
    time.sleep(1.0)
    assert [p for p in pids if is_alive(p)] == []


def test_node_workers_keep_the_retriever_loaded_across_rounds(tiny_encoder, tiny_dataset, tmp_path):
    """Real SuperNodes, each with a long-lived ``softcar-fed worker`` beside it: every training
    and evaluation message is answered by the worker (one process for all rounds), DP ε still
    accumulates across rounds, and the ClientApp's mods still run (the audit log is written)."""
    output = tmp_path / "out"
    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        for i in range(2):
            node = {"partition-id": i, "num-partitions": 2, "audit-log": str(tmp_path / f"audit-{i}")}
            fed.start_node(i, node, worker=True)
        assert all(fed.node_configs[i]["worker"] == str(fed.worker_sockets[i]) for i in range(2))
        run = fed.run(
            {
                "num-server-rounds": 2,
                "encoder": tiny_encoder,
                "dataset": str(tiny_dataset),
                "output-dir": str(output),
                "min-train-nodes": 2,
                "min-available-nodes": 2,
                "batch-size": 8,
                "max-query-length": 16,
                "target-epsilon": 8.0,
                "federated-evaluation": True,
                "round-timeout": 120.0,
            }
        )
        run.process.wait(timeout=300)
        assert run.process.returncode == 0, fed.tail(run)
        wait_for(lambda: (output / "server" / "summary.json").is_file(), 60, what="summary")
        worker_pids = [fed.workers[i].process.pid for i in range(2)]
        assert all(is_alive(pid) for pid in worker_pids)  # the same worker served every round
        pids = fed.all_pids()
    rounds = {r["round"]: r for r in read_rounds(output)}
    assert [len(rounds[k]["accepted"]) for k in (1, 2)] == [2, 2]
    assert 0 < rounds[1]["epsilon"] < rounds[2]["epsilon"] <= 8.0 + 1e-6  # the ledger came back each round
    for i in range(2):
        log = next(fed.logs.glob(f"worker-{i}-*.log")).read_text(errors="replace")
        assert log.count("training stack imported") == 1
        assert log.count("answered a train message") == 2 and log.count("answered a evaluate message") >= 2
        assert len(list((tmp_path / f"audit-{i}").glob("*.bin"))) >= 4  # 2 train + 2 evaluate replies
    time.sleep(1.0)
    assert [p for p in pids if is_alive(p)] == []


def test_unregistered_supernode_is_refused(tls_files, supernode_keys, tmp_path):
    """With --enable-supernode-auth only SuperNodes whose public key was registered connect."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    registered_private, registered_public = supernode_keys
    stranger = tmp_path / "stranger_key"
    stranger.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    with LocalFederation(tmp_path / "fed", tls=tls_files, supernode_auth=True) as fed:
        fed.start_superlink()
        fed.register_node_key(0, registered_private, registered_public)
        fed.node_keys[1] = stranger  # never registered
        fed.start_node(0, {"partition-id": 0, "num-partitions": 2})
        fed.start_node(1, {"partition-id": 1, "num-partitions": 2})
        wait_for(lambda: fed.connected_nodes() >= 1, 60, what="registered node online")
        time.sleep(5)
        assert fed.connected_nodes() == 1
        pids = fed.all_pids()
    time.sleep(1.0)
    assert [p for p in pids if is_alive(p)] == []


def test_opt_in_deployment_joins_and_leaves_checkpoint_untouched(tiny_encoder, tiny_dataset, tmp_path):
    """An existing deployment (a saved ClassifierRetriever + feedback file) joins with one call,
    trains a round, leaves; its checkpoint is byte-for-byte unchanged."""
    import hashlib

    from softcar_federated import partitions
    from softcar_federated.optin import FederationConfig, federated_retriever, join

    split = partitions.load_split(tiny_dataset)
    checkpoint = tmp_path / "deployment" / "retriever"
    partitions.build_retriever(split.corpus, tiny_encoder, max_query_length=16).save(checkpoint)
    partitions.write_pairs(tmp_path / "feedback.jsonl", split.feedback)
    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(checkpoint.iterdir())}  # noqa: E731
    before = digest()
    output = tmp_path / "out"
    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        membership = join(
            FederationConfig(
                superlink=fed.address,
                checkpoint=str(checkpoint),
                insecure=True,
                feedback=str(tmp_path / "feedback.jsonl"),
                work_dir=str(tmp_path / "work"),
                worker_socket=str(fed.work_dir / "w.sock"),  # the retriever stays loaded in a worker
            )
        )
        assert membership.worker is not None
        try:
            run = fed.run(
                {
                    "num-server-rounds": 1,
                    "encoder": tiny_encoder,
                    "dataset": str(tiny_dataset),
                    "mode": "adapter+head",
                    "output-dir": str(output),
                    "batch-size": 8,
                    "max-query-length": 16,
                    "round-timeout": 120.0,
                }
            )
            run.process.wait(timeout=240)
            assert run.process.returncode == 0, fed.tail(run)
            wait_for(lambda: (output / "server" / "summary.json").is_file(), 60, what="summary")
        finally:
            membership.leave()
        assert not is_alive(membership.process.process.pid)
        assert not is_alive(membership.worker.process.pid)
    rounds = read_rounds(output)
    assert len(rounds[-1]["accepted"]) == 1
    assert "answered a train message" in (tmp_path / "work" / "worker.log").read_text(errors="replace")
    assert digest() == before  # leaving the federation leaves the local retriever untouched
    assert federated_retriever(tmp_path / "work") is not None


def test_flwr_run_simulation_engine(tiny_encoder, tiny_dataset, tmp_path):
    """`flwr run federated local-sim`: Flower's simulation engine runs the app end to end.

    Uses a private FLWR_HOME (a copy of federated/flwr-home/config.toml), so the managed
    SuperLink that `flwr run` leaves behind is identifiable by its path and is stopped here.
    """
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
            "num-server-rounds=1",
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
        PATH=f"{flwr.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )  # flwr starts flower-superlink by name
    try:
        result = subprocess.run(
            [
                str(flwr),
                "run",
                str(app),
                "local-sim",
                "--stream",
                "--federation-config",
                "num-supernodes=2",
                "--run-config",
                run_config,
            ],
            capture_output=True,
            text=True,
            timeout=420,
            env=env,
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-4000:]
        assert "aggregate_train: Received 2 results and 0 failures" in log, log[-4000:]
        ClassifierRetriever.load(output / "server" / "global" / "latest")
    finally:
        for pid in processes_in(home):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    time.sleep(1.0)
    assert processes_in(home) == [], "processes left running"
