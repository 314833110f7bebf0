"""SecAgg+ (Flower's ``SecAggPlusWorkflow`` + ``secaggplus_mod``): refused at start when it cannot
work, and run for real on a SuperLink with three SuperNodes, one of which drops out mid-round."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import client_strings, leaks, node_message, server_start

from softcar import ClassifierRetriever
from softcar.errors import SoftcarError
from softcar_federated.config import FedConfig
from softcar_federated.secure_aggregation import SecureAggregationConfigError, check_config
from softcar_federated.supervisor import LocalFederation, is_alive, read_rounds, wait_for


def _config(**values: object) -> FedConfig:
    return FedConfig.from_run_config({"secure-aggregation": True, "min-train-nodes": 3, **values})


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"min-train-nodes": 1}, ["min-train-nodes=1"]),
        ({"min-train-nodes": 2, "secagg-reconstruction-threshold": 3}, ["exceeds min-train-nodes=2"]),
        ({"min-train-nodes": 5, "secagg-reconstruction-threshold": 2}, ["not a majority of the 5 shares"]),
        ({"secagg-num-shares": 5, "secagg-reconstruction-threshold": 5}, ["must be below secagg-num-shares=5"]),
        ({"secagg-num-shares": 2}, ["secagg-num-shares=2"]),
        ({"secagg-reconstruction-threshold": 1}, ["secagg-reconstruction-threshold=1"]),
        ({"dp": "server"}, ["dp='server'"]),
        ({"dp": "client-level", "population": 4, "clients-per-round": 3}, ["dp='client-level'"]),
    ],
)
def test_unworkable_settings_are_refused_with_a_typed_error(values, names):
    with pytest.raises(SecureAggregationConfigError) as caught:
        check_config(_config(**values))
    assert isinstance(caught.value, SoftcarError) and isinstance(caught.value, ValueError)
    for name in names:
        assert name in str(caught.value)


def test_workable_settings_pass_and_plain_runs_are_not_checked():
    check_config(_config())  # 3 nodes, threshold 2 of 3 shares: one may drop out
    check_config(_config(**{"min-train-nodes": 5, "secagg-reconstruction-threshold": 3}))
    check_config(FedConfig.from_run_config({"dp": "server"}))  # no SecAgg+: nothing to refuse


def test_cli_refuses_secagg_with_too_few_clients():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "softcar_federated.cli",
            "local",
            "--secagg",
            "--clients",
            "2",
            "--kill-client-at-round",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "SecAgg+ cannot run" in result.stderr and "min-train-nodes=1" in result.stderr


def test_clientapp_module_does_not_import_torch():
    """Every SecAgg+ stage is a fresh ClientApp process in deployment: loading the app stays light."""
    code = (
        "import sys, softcar_federated.client_app; "
        "print(sorted(m for m in ('torch', 'transformers', 'opacus') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_secagg_three_supernodes_one_drops_out(tiny_encoder, tiny_dataset, tmp_path):
    """3 real SuperNodes, threshold 2: node 2 fails in round 1 after the key exchange (its masked
    vector never arrives), the others' shares unmask the sum; in round 2 all three contribute."""
    output = tmp_path / "out"
    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        for i in range(3):
            node = {"partition-id": i, "num-partitions": 3, "audit-log": str(tmp_path / f"audit-{i}")}
            if i == 2:
                node["crash-at-round"] = 1
            fed.start_node(i, node)
        run = fed.run(
            {
                "num-server-rounds": 2,
                "secure-aggregation": True,
                "secagg-reconstruction-threshold": 2,
                "mode": "adapter+head",
                "encoder": tiny_encoder,
                "dataset": str(tiny_dataset),
                "output-dir": str(output),
                "min-train-nodes": 3,
                "min-available-nodes": 3,
                "batch-size": 8,
                "max-query-length": 16,
                "target-epsilon": 8.0,
                "round-timeout": 180.0,
            }
        )
        run.process.wait(timeout=600)
        assert run.process.returncode == 0, fed.tail(run)
        wait_for(lambda: (output / "server" / "summary.json").is_file(), 60, what="summary")
        pids = fed.all_pids()
        rounds = read_rounds(output)
    by_round = {r["round"]: r for r in rounds}
    assert set(by_round) == {0, 1, 2}
    assert len(by_round[1]["accepted"]) == 2 and len(by_round[1]["failed"]) >= 1  # dropout survived
    assert len(by_round[2]["accepted"]) == 3
    for r in (1, 2):
        assert by_round[r]["secure_aggregation"] is True
        assert 0 < by_round[r]["train"]["epsilon"] <= 8.0 + 1e-6  # ε still reported per node, in clear
        assert by_round[r]["server_eval"]["R@1"] >= 0
    assert 0 < by_round[2]["epsilon"] <= 8.0 + 1e-6
    ClassifierRetriever.load(output / "server" / "global" / "latest")  # the unmasked aggregate is a model
    # Every reply that left each node (all four SecAgg+ stages, both rounds): no text, no ids.
    for i in range(3):
        logged = sorted((tmp_path / f"audit-{i}").glob("*.bin"))
        assert len(logged) == (
            6 if i == 2 else 8
        )  # 4 stages x 2 rounds; node 2: no masked vector, no unmask in round 1
        secrets = client_strings(tiny_dataset, 3, i, "adapter+head")
        for path in logged:
            assert leaks(path.read_bytes(), secrets) == [], path.name
    time.sleep(1.0)
    assert [p for p in pids if is_alive(p)] == []


@pytest.mark.slow
def test_secagg_supernode_killed_mid_round_and_rejoins(tiny_encoder, tiny_dataset, tmp_path):
    """A real crash: SuperNode 2 (and its ClientApp) is SIGKILLed as soon as round 1 reaches
    SecAgg+'s masked-vector stage, i.e. after it has handed out its key shares. The SuperLink
    reports it unavailable, the two survivors' shares unmask the sum, and it is restarted (with a
    fresh SecAgg+ state). Round 2 samples ``min-train-nodes`` = 2 or all 3 of the nodes online
    (Flower's legacy FedAvg sizes its sample before the restarted node is back), and completes."""
    output = tmp_path / "out"
    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        for i in range(3):
            fed.start_node(i, {"partition-id": i, "num-partitions": 3})
        run = fed.run(
            {
                "num-server-rounds": 2,
                "secure-aggregation": True,
                "secagg-reconstruction-threshold": 2,
                "mode": "adapter+head",
                "encoder": tiny_encoder,
                "dataset": str(tiny_dataset),
                "output-dir": str(output),
                "min-train-nodes": 2,
                "min-available-nodes": 3,
                "batch-size": 8,
                "max-query-length": 16,
                "dp": "none",
                "round-timeout": 300.0,
            }
        )
        log = run.log_path
        wait_for(lambda: "[Stage 2] Forwarding" in log.read_text(errors="replace"), 400, what="round 1 stage 2")
        fed.kill_node(2)
        wait_for(lambda: any(r["round"] == 1 for r in read_rounds(output)), 400, what="round 1 aggregated")
        fed.start_node(2)  # same node config: rejoins for round 2
        run.process.wait(timeout=600)
        assert run.process.returncode == 0, fed.tail(run)
        wait_for(lambda: (output / "server" / "summary.json").is_file(), 60, what="summary")
        pids = fed.all_pids()
        rounds = {r["round"]: r for r in read_rounds(output)}
    assert len(rounds[1]["accepted"]) == 2 and len(rounds[1]["failed"]) >= 1
    assert len(rounds[2]["accepted"]) >= 2 and rounds[2]["server_eval"] is not None
    time.sleep(1.0)
    assert [p for p in pids if is_alive(p)] == []


def _fitins_message(arrays: list, server_round: int, digest: str):
    from flwr.app import MessageType
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    fitins = FitIns(ndarrays_to_parameters(arrays), {"server-round": server_round, "doc-ids-sha256": digest})
    return node_message(
        compat.fitins_to_recorddict(fitins, True),
        MessageType.TRAIN,
        run_id=5,
        message_id=f"s{server_round}",
        group_id=str(server_round),
    )


def test_secagg_training_stage_in_process(tiny_encoder, tiny_dataset, tmp_path):
    """The handler behind ``secaggplus_mod``: legacy ``fitins`` in, ``fitres`` out with this node's
    tensors in the server's key order and its weight; a poisoned update is refused on the node
    (the server could not see it); a node whose budget is spent weighs 0 in the sum."""
    from flwr.app import Context, RecordDict
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from softcar_federated import client_app, partitions
    from softcar_federated.deployment import clear_deployment_cache
    from softcar_federated.validation import MalformedUpdateError

    run_config = {
        "encoder": tiny_encoder,
        "dataset": str(tiny_dataset),
        "output-dir": str(tmp_path),
        "num-server-rounds": 1,
        "mode": "adapter+head",
        "secure-aggregation": True,
        "min-train-nodes": 3,
        "batch-size": 8,
        "max-query-length": 16,
        "target-epsilon": 4.0,
    }
    config, server = server_start(run_config)
    state = server.trainable_state_dict(parts=config.shared_parts)
    arrays = [v.numpy() for v in state.values()]
    digest = partitions.doc_ids_digest(server.documents)
    clear_deployment_cache()

    def context(**node: object) -> Context:
        node_config = {"partition-id": 0, "num-partitions": 3, **node}
        return Context(run_id=5, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)

    ctx = context()
    reply = client_app.train(_fitins_message(arrays, 1, digest), ctx)
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    sent = parameters_to_ndarrays(fitres.parameters)
    assert [a.shape for a in sent] == [a.shape for a in arrays]
    assert fitres.num_examples == fitres.metrics["num-examples"] > 0
    assert 0 < fitres.metrics["epsilon"] <= 4.0 + 1e-6 and fitres.metrics["abstained"] == 0

    # Round 2 of a 1-round budget: abstain with weight 0 (adds nothing to the masked sum).
    spent = client_app.train(_fitins_message(arrays, 2, digest), ctx)
    spent_res = compat.recorddict_to_fitres(spent.content, keep_input=True)
    assert spent_res.metrics["abstained"] == 1 and spent_res.num_examples == 0

    clear_deployment_cache()
    with pytest.raises(MalformedUpdateError, match="NaN"):
        client_app.train(_fitins_message(arrays, 1, digest), context(poison="nan", **{"work-dir": str(tmp_path / "p")}))
