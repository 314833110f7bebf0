"""No text leaves a deployment: every message the real ClientApp sends over several rounds
(training and evaluation replies, with all their records: arrays, metrics, configs), serialised
exactly as Flower puts it on the wire, contains none of the node's document texts, document ids,
feedback questions or held-out questions, neither as bytes nor as any string value."""

from __future__ import annotations

import pytest
from conftest import client_strings, leaks, node_message, server_start
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from softcar_federated import client_app, partitions
from softcar_federated.config import NodeConfig
from softcar_federated.deployment import clear_deployment_cache, open_deployment
from softcar_federated.message_audit import AUDIT_LOG_KEY, wire_bytes

ROUNDS = 3


def _message(content: RecordDict, server_round: int, kind: str) -> Message:
    return node_message(content, kind, run_id=11, message_id=f"m{server_round}{kind}", group_id=str(server_round))


def _strings_of(message: Message) -> list[str]:
    """Every string a reply carries: record names, keys, and config values."""
    out: list[str] = []
    for name, record in message.content.items():
        out.append(name)
        for key, value in record.items():
            out.append(key)
            values = value if isinstance(value, list) else [value]
            out += [v for v in values if isinstance(v, str)]
            out += [v.decode("utf-8", "replace") for v in values if isinstance(v, bytes)]
    return out


@pytest.mark.parametrize("mode", ["adapter", "adapter+head"])
def test_no_client_text_or_doc_id_in_any_reply(mode, tiny_encoder, tiny_dataset, tmp_path):
    audit = tmp_path / "audit"
    run_config = {
        "encoder": tiny_encoder,
        "dataset": str(tiny_dataset),
        "output-dir": str(tmp_path / "out"),
        "num-server-rounds": ROUNDS,
        "mode": mode,
        "batch-size": 8,
        "max-query-length": 16,
        "pseudo-queries-per-document": 2,
        "target-epsilon": 8.0,
    }
    config, server = server_start(run_config)
    arrays = ArrayRecord(torch_state_dict=server.trainable_state_dict(parts=config.shared_parts))
    round_config = ConfigRecord({"doc-ids-sha256": partitions.doc_ids_digest(server.documents)})
    node_config = {"partition-id": 0, "num-partitions": 2, AUDIT_LOG_KEY: str(audit)}
    context = Context(run_id=11, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)
    clear_deployment_cache()

    replies: list[Message] = []
    for server_round in range(1, ROUNDS + 1):
        config_record = ConfigRecord({**dict(round_config), "server-round": server_round})
        for kind in (MessageType.TRAIN, MessageType.EVALUATE):
            message = _message(RecordDict({"arrays": arrays, "config": config_record}), server_round, kind)
            reply = client_app.app(message, context)  # the real ClientApp, with its mods
            assert not reply.has_error(), reply.error
            replies.append(reply)
        arrays = replies[-2].content["arrays"]  # as if the server had aggregated this node alone

    # What the node knows and must keep: its documents, ids, questions, and its training texts.
    secrets = client_strings(tiny_dataset, 2, 0, mode)
    deployment = open_deployment(config, NodeConfig.from_node_config(node_config), 11)
    secrets |= {text for text, _ in deployment.examples()}
    assert len(secrets) > 20

    kinds = {tuple(sorted(r.content.keys())) for r in replies}
    assert {("arrays", "metrics"), ("metrics",)} <= kinds  # training and evaluation replies
    blobs = [wire_bytes(r) for r in replies]
    logged = sorted(audit.glob("*.bin"))
    assert len(logged) == 2 * ROUNDS  # the audit mod saw every reply that left
    blobs += [p.read_bytes() for p in logged]
    assert all(len(b) > 1000 for b in blobs[:1])  # the tensors are really in there
    for blob in blobs:
        assert leaks(blob, secrets) == []
    for reply in replies:
        for value in _strings_of(reply):
            assert not any(secret in value or value == secret for secret in secrets if len(secret) >= 4), value

    # The detector is not vacuous: one document id in a metric name or config value is caught.
    doc_id = sorted(s for s in secrets if "-" in s and " " not in s)[0]
    tainted = Message(
        RecordDict({"config": ConfigRecord({"note": doc_id})}), reply_to=_message(RecordDict(), 0, "train")
    )
    assert leaks(wire_bytes(tainted), secrets) == [doc_id]
