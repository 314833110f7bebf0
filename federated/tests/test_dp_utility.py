"""Options that buy utility under DP: head-only local training (the adapter frozen, so DP noise
goes to fewer parameters), a non-private warm start on public documents only, and the server
keeping its best global model so a noisy round cannot leave the federation below its start."""

from __future__ import annotations

import torch
from conftest import node_message
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from softcar import ClassifierRetriever
from softcar_federated import client_app, partitions
from softcar_federated.config import FedConfig
from softcar_federated.local_training import warm_start
from softcar_federated.server_app import GlobalModel


def _run_config(tiny_encoder, tiny_dataset, tmp_path, **extra) -> dict:
    return {
        "encoder": tiny_encoder,
        "dataset": str(tiny_dataset),
        "output-dir": str(tmp_path),
        "mode": "adapter+head",
        "num-server-rounds": 2,
        "batch-size": 8,
        "max-query-length": 16,
        "target-epsilon": 8.0,
        "pseudo-queries-per-document": 2,
        **extra,
    }


def _train_message(arrays: ArrayRecord, digest: str) -> Message:
    config = ConfigRecord({"server-round": 1, "doc-ids-sha256": digest})
    return node_message(RecordDict({"arrays": arrays, "config": config}), MessageType.TRAIN, run_id=3, message_id="m1")


def test_head_only_dp_leaves_the_adapter_exactly_as_sent(tiny_encoder, tiny_dataset, tmp_path):
    run_config = _run_config(tiny_encoder, tiny_dataset, tmp_path, **{"local-parts": "head"})
    config = FedConfig.from_run_config(run_config)
    model = GlobalModel(config, tmp_path / "server")
    sent = model.initial_arrays()
    context = Context(
        run_id=3,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=run_config,
    )
    digest = str(model.train_config()["doc-ids-sha256"])
    reply = client_app.train(_train_message(sent, digest), context)
    metrics = reply.content["metrics"]
    back = reply.content["arrays"].to_torch_state_dict()
    before = sent.to_torch_state_dict()
    for key in before:
        if key.startswith("adapter."):
            assert torch.equal(back[key], before[key]), key
    assert not torch.equal(back["head.weight"], before["head.weight"])  # the head did train (under DP)
    assert 0 < metrics["epsilon"] <= 8.0 + 1e-6
    assert 0 < metrics["train-s"] <= metrics["handler-s"]


def test_warm_start_trains_on_documents_only(tiny_encoder, tiny_dataset):
    split = partitions.load_split(tiny_dataset)
    retriever = partitions.build_retriever(split.corpus, tiny_encoder, max_query_length=16, pseudo_queries=2)
    examples = retriever.training_examples([])
    questions = {query for query, _ in split.feedback + split.heldout}
    assert examples and not questions & {text for text, _ in examples}  # no user question is used
    before = {k: v.clone() for k, v in retriever.trainable_state_dict().items()}
    config = FedConfig(encoder=tiny_encoder, batch_size=8, pseudo_queries_per_document=2).train_config()
    result = warm_start(retriever, config, epochs=1)
    assert result.steps > 0 and torch.isfinite(torch.tensor(result.loss))
    after = retriever.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_server_keeps_its_best_global_model(tiny_encoder, tiny_dataset, tmp_path):
    config = FedConfig.from_run_config(_run_config(tiny_encoder, tiny_dataset, tmp_path))
    model = GlobalModel(config, tmp_path / "server")
    initial = model.initial_arrays()
    start = model.evaluate(0, initial)
    assert start is not None
    # A "round" that destroys the head (as heavy DP noise can): worse, so not kept.
    state = initial.to_torch_state_dict()
    torch.manual_seed(0)
    state["head.weight"] = torch.randn_like(state["head.weight"]) * 10
    worse = model.evaluate(1, ArrayRecord(torch_state_dict=state))
    assert worse is not None and worse["R@1"] < start["R@1"]
    assert model.best is not None and model.best["round"] == 0 and model.best["server_eval"] == start
    kept = ClassifierRetriever.load(tmp_path / "server" / "global" / "best", show_progress=False)
    assert partitions.quality(kept, model.split.heldout)["R@1"] == start["R@1"]  # type: ignore[union-attr]
