"""The ClientApp's train/evaluate functions called in-process with real Flower records: the
privacy ledger persists in ``context.state`` across rounds, and a spent budget means abstaining."""

from __future__ import annotations

import math

import pytest
from conftest import dp_client, node_message
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from softcar_federated import client_app, partitions
from softcar_federated.config import FedConfig, NodeConfig
from softcar_federated.privacy import PrivacyLedger


def _message(arrays: ArrayRecord, server_round: int, kind: str = MessageType.TRAIN) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return node_message(content, kind, run_id=7, message_id=f"m{server_round}{kind}")


@pytest.fixture
def setup(tiny_encoder, tiny_dataset, tmp_path):
    config, arrays, context = dp_client(tiny_encoder, tiny_dataset, tmp_path, {"partition-id": 0, "num-partitions": 2})
    return config, arrays, context, tmp_path


def test_ledger_accumulates_in_context_state_and_on_disk(setup):
    config, arrays, context, tmp_path = setup
    eps = []
    for server_round in (1, 2):
        reply = client_app.train(_message(arrays, server_round), context)
        metrics = reply.content["metrics"]
        assert metrics["abstained"] == 0 and metrics["num-examples"] > 0
        assert set(reply.content["arrays"].keys()) == {"adapter.proj.weight", "adapter.proj.bias"}  # head stays local
        eps.append(metrics["epsilon"])
    assert 0 < eps[0] < eps[1] <= config.target_epsilon + 1e-6
    flat = dict(context.state.config_records[client_app.LEDGER_STATE_KEY])
    assert PrivacyLedger.from_flat(flat).epsilon(config.target_delta) == pytest.approx(eps[1])
    assert PrivacyLedger.load(tmp_path / "node-0" / "privacy-ledger.json").epsilon(
        config.target_delta
    ) == pytest.approx(eps[1])
    # A third round would exceed the budget planned for two: the client abstains, ε unchanged.
    reply = client_app.train(_message(arrays, 3), context)
    assert reply.content["metrics"]["abstained"] == 1
    assert reply.content["metrics"]["epsilon"] == pytest.approx(eps[1])


def test_restarted_client_recovers_ledger_from_disk(setup):
    _, arrays, context, _ = setup
    first = client_app.train(_message(arrays, 1), context).content["metrics"]["epsilon"]
    fresh = Context(
        run_id=7,
        node_id=99,
        node_config=dict(context.node_config),
        state=RecordDict(),
        run_config=dict(context.run_config),
    )
    second = client_app.train(_message(arrays, 2), fresh).content["metrics"]["epsilon"]
    assert second > first  # the restarted node kept counting instead of starting from zero


def test_evaluate_reports_heldout_quality(setup):
    _, arrays, context, _ = setup
    reply = client_app.evaluate(_message(arrays, 1, MessageType.EVALUATE), context)
    metrics = reply.content["metrics"]
    assert 0.0 <= metrics["R@1"] <= 1.0 and metrics["num-examples"] > 0


def test_partitions_cover_documents_once(tiny_dataset):
    split = partitions.load_split(tiny_dataset)
    for iid in (True, False):
        parts = partitions.partition(split, 2, iid=iid)
        ids = [d for p in parts for d in p.doc_ids]
        assert sorted(ids) == sorted(d.id for d in split.corpus)
    topics = [
        {partitions.topic_of(next(d for d in split.corpus if d.id == i)) for i in p.doc_ids}
        for p in partitions.partition(split, 3, iid=False)
    ]
    assert all(len(t) == 1 for t in topics)  # non-IID: one topic per deployment


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="partition-id"):
        NodeConfig.from_node_config({})
    with pytest.raises(ValueError):
        FedConfig.from_run_config({"mode": "everything"})
    assert math.isinf(FedConfig.from_run_config({"target-epsilon": "inf"}).target_epsilon)


def test_train_and_test_splits_are_used_as_given(tmp_path):
    from conftest import write_beir

    folder = write_beir(tmp_path / "two-splits", docs_per_topic=2)
    test = (folder / "qrels" / "test.tsv").read_text().splitlines()
    (folder / "qrels" / "train.tsv").write_text("\n".join(test[:4]) + "\n")
    split = partitions.load_split(folder)
    assert len(split.feedback) == 3 and len(split.heldout) == len(test) - 1


def test_local_examples_reads_own_ids_once(tiny_encoder, tiny_dataset):
    """Regression: ``set(own_doc_ids)`` was rebuilt for every document (quadratic in the corpus)."""
    split = partitions.load_split(tiny_dataset)
    retriever = partitions.build_retriever(split.corpus, tiny_encoder, max_query_length=16, pseudo_queries=1)
    own = [d.id for d in split.corpus[::2]]

    class CountingIds:
        iterations = 0

        def __iter__(self):
            CountingIds.iterations += 1
            return iter(own)

    examples = partitions.local_examples(retriever, CountingIds(), split.feedback)
    assert CountingIds.iterations == 1
    rows = {retriever.documents[row].id for _, row in examples}
    assert rows == set(own)
