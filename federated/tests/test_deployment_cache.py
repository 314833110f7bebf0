"""A node's deployment stays loaded across rounds within one process (simulation actors, in-process
use), and is reloaded as soon as its federated copy on disk was rewritten by someone else."""

from __future__ import annotations

import pytest
from conftest import node_message
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from softcar_federated import client_app, partitions
from softcar_federated.config import FedConfig, NodeConfig
from softcar_federated.deployment import clear_deployment_cache, copy_fingerprint, open_deployment


@pytest.fixture
def configs(tiny_encoder, tiny_dataset, tmp_path):
    run_config = {
        "encoder": tiny_encoder,
        "dataset": str(tiny_dataset),
        "output-dir": str(tmp_path),
        "num-server-rounds": 3,
        "batch-size": 8,
        "max-query-length": 16,
        "dp": "none",
    }
    clear_deployment_cache()
    yield (
        run_config,
        FedConfig.from_run_config(run_config),
        NodeConfig.from_node_config({"partition-id": 1, "num-partitions": 2}),
    )
    clear_deployment_cache()


def _train_message(arrays: ArrayRecord, server_round: int) -> Message:
    return node_message(
        RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}),
        MessageType.TRAIN,
        run_id=3,
        message_id=f"t{server_round}",
        group_id=str(server_round),
    )


def test_rounds_reuse_the_loaded_deployment(configs, tiny_dataset, tiny_encoder):
    run_config, config, node = configs
    split = partitions.load_split(tiny_dataset)
    server = partitions.build_retriever(split.corpus, tiny_encoder, max_query_length=16)
    arrays = ArrayRecord(torch_state_dict=server.trainable_state_dict(parts=config.shared_parts))
    context = Context(
        run_id=3,
        node_id=1,
        node_config={"partition-id": 1, "num-partitions": 2},
        state=RecordDict(),
        run_config=run_config,
    )
    first = open_deployment(config, node, 3)
    for server_round in (1, 2):
        metrics = client_app.train(_train_message(arrays, server_round), context).content["metrics"]
        assert 0 < metrics["train-s"] <= metrics["handler-s"]
        assert open_deployment(config, node, 3) is first  # same object: nothing reloaded
    assert first.saved == copy_fingerprint(first.copy_dir) != ()  # it wrote its copy and knows it

    # Another process trains this node meanwhile: the copy on disk changes, the cache must not win.
    other = type(first).open(config, node, 3)
    other.retriever.save(other.copy_dir)
    reloaded = open_deployment(config, node, 3)
    assert reloaded is not first and reloaded.saved == copy_fingerprint(first.copy_dir)


def test_failed_round_drops_the_cached_model(configs):
    run_config, config, node = configs
    crash = {"partition-id": 1, "num-partitions": 2, "crash-at-round": 1}
    crashing = NodeConfig.from_node_config(crash)
    before = open_deployment(config, crashing, 3)
    context = Context(run_id=3, node_id=1, node_config=crash, state=RecordDict(), run_config=run_config)
    with pytest.raises(RuntimeError, match="injected crash"):
        client_app.train(_train_message(ArrayRecord(), 1), context)
    assert open_deployment(config, crashing, 3) is not before


def test_noise_calibration_is_kept_in_the_node_state(configs, tiny_dataset, tiny_encoder):
    run_config, _, _ = configs
    run_config = {**run_config, "dp": "client", "target-epsilon": 8.0}
    config = FedConfig.from_run_config(run_config)
    split = partitions.load_split(tiny_dataset)
    server = partitions.build_retriever(split.corpus, tiny_encoder, max_query_length=16)
    arrays = ArrayRecord(torch_state_dict=server.trainable_state_dict(parts=config.shared_parts))
    node_config = {"partition-id": 1, "num-partitions": 2}
    context = Context(run_id=3, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)
    first = client_app.train(_train_message(arrays, 1), context).content["metrics"]
    memo = context.state.config_records[client_app.NOISE_PLAN_STATE_KEY]
    assert memo["sigma"] == pytest.approx(first["noise-multiplier"]) and memo["sigma"] > 0
    memo["sigma"] = 0.5  # a planted value: the next round must take it from the state, not recompute
    second = client_app.train(_train_message(arrays, 2), context).content["metrics"]
    assert second["noise-multiplier"] == pytest.approx(0.5)


def test_question_rows_are_calibrated_for_the_deployments_own_documents(configs, tiny_dataset):
    """A shared head indexes every deployment's documents, but this one's users ask about its
    own: calibration is told the share of those that have feedback, not of the whole index."""
    run_config, _, node = configs
    config = FedConfig.from_run_config({**run_config, "mode": "adapter+head"})
    deployment = open_deployment(config, node, 3)
    part = partitions.partition(partitions.load_split(tiny_dataset), 2, config.iid, config.seed)[1]
    asked = {doc_id for _, doc_id in part.feedback}
    assert asked and deployment.own_doc_ids is not None
    assert len(deployment.retriever.documents) > len(deployment.own_doc_ids)
    expected = len(asked & set(part.doc_ids)) / len(part.doc_ids)
    assert deployment.retriever.config.scoring.feedback_coverage == pytest.approx(expected)
