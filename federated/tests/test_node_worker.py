"""The long-lived node worker: the ClientApp's real handlers delegated over a Unix-domain socket
(in-process worker thread here; ``test_e2e.py`` runs real worker processes beside SuperNodes)."""

from __future__ import annotations

import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import dp_client, node_message
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from softcar_federated import client_app, node_worker
from softcar_federated.privacy import PrivacyLedger

Worker = tuple[threading.Event, threading.Thread]


def _start(path: Path, handlers: dict[str, node_worker.Handler] | None = None) -> Worker:
    stop = threading.Event()
    thread = threading.Thread(
        target=node_worker.serve, args=(path,), kwargs={"handlers": handlers, "preload": False, "stop": stop.is_set}
    )
    thread.start()
    for _ in range(200):
        if node_worker.is_listening(path):
            break
        stop.wait(0.05)
    assert node_worker.is_listening(path), "the worker did not start listening"
    return stop, thread


@pytest.fixture
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scw-") as folder:  # short: socket paths are limited
        yield Path(folder) / "w" / "node.sock"


def _echo(msg: Message, context: Context) -> Message:
    context.state.config_records["seen"] = ConfigRecord({"rounds": int(msg.content["config"]["server-round"])})
    return Message(RecordDict({"metrics": MetricRecord({"handled-by-worker": 1})}), reply_to=msg)


def _failing(msg: Message, context: Context) -> Message:
    raise ValueError("the deployment's checkpoint is corrupt")


def _slow(msg: Message, context: Context) -> Message:
    threading.Event().wait(1.5)
    return _echo(msg, context)


def _context(node_config: dict) -> Context:
    return Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def _train_message(server_round: int, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
    if arrays is not None:
        content["arrays"] = arrays
    return node_message(content, MessageType.TRAIN, run_id=7, message_id=f"m{server_round}")


def test_reply_and_context_state_come_back_and_the_socket_is_private(socket_path):
    stop, thread = _start(socket_path, {"train": _echo})
    try:
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        context = _context({"worker": str(socket_path)})
        msg = _train_message(3)
        reply = node_worker.delegate("train", msg, context, str(socket_path))
        assert reply.content["metrics"]["handled-by-worker"] == 1
        assert reply.metadata.reply_to_message_id == msg.metadata.message_id
        assert reply.metadata.dst_node_id == msg.metadata.src_node_id
        assert context.state.config_records["seen"]["rounds"] == 3  # the SuperNode keeps it
    finally:
        stop.set()
        thread.join(10)
    assert not socket_path.exists()


def test_handler_failure_and_garbage_are_reported_and_the_worker_survives(socket_path):
    stop, thread = _start(socket_path, {"train": _echo, "evaluate": _failing, "slow": _slow})
    try:
        with pytest.raises(node_worker.NodeWorkerError, match="did not answer the slow message within 0.5s"):
            node_worker.delegate("slow", _train_message(1), _context({}), str(socket_path), timeout=0.5)
        with pytest.raises(node_worker.NodeWorkerError, match="ValueError: the deployment's checkpoint is corrupt"):
            node_worker.delegate("evaluate", _train_message(1), _context({}), str(socket_path))
        with pytest.raises(node_worker.NodeWorkerError, match="unknown message kind 'query'"):
            node_worker.delegate("query", _train_message(1), _context({}), str(socket_path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # not a worker frame at all
            raw.connect(str(socket_path))
            raw.sendall(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
            raw.shutdown(socket.SHUT_WR)
            assert b"malformed worker frame" in raw.recv(4096)
        reply = node_worker.delegate("train", _train_message(2), _context({}), str(socket_path))
        assert reply.content["metrics"]["handled-by-worker"] == 1
    finally:
        stop.set()
        thread.join(10)


def test_no_worker_listening_is_a_clear_error(socket_path):
    context = _context({"partition-id": 0, "num-partitions": 2, "worker": str(socket_path)})
    with pytest.raises(node_worker.NodeWorkerError, match=r"no worker listens there.*softcar-fed worker --socket"):
        client_app.train(_train_message(1), context)  # delegates: it must not quietly train here


def test_socket_path_problems_are_refused(socket_path, tmp_path):
    with pytest.raises(node_worker.NodeWorkerError, match="over the 100 a Unix-domain socket allows"):
        node_worker.check_socket_path(tmp_path / ("x" * 120))
    stop, thread = _start(socket_path, {"train": _echo})
    try:
        with pytest.raises(node_worker.NodeWorkerError, match="another worker already listens"):
            node_worker.serve(socket_path, {"train": _echo}, preload=False, stop=lambda: True)
    finally:
        stop.set()
        thread.join(10)
    socket_path.touch()  # a stale file left by a worker that was killed: replaced
    stop, thread = _start(socket_path, {"train": _echo})
    stop.set()
    thread.join(10)


def test_real_handlers_train_in_the_worker_and_the_ledger_persists(tiny_encoder, tiny_dataset, tmp_path, socket_path):
    """The ClientApp's own train/evaluate through the worker: two DP rounds accumulate ε in the
    node's context state exactly as without a worker, and the worker keeps the deployment loaded."""
    from softcar_federated import deployment

    config, arrays, context = dp_client(
        tiny_encoder, tiny_dataset, tmp_path, {"partition-id": 0, "num-partitions": 2, "worker": str(socket_path)}
    )
    opened = []
    original = deployment.LocalDeployment.open

    def counting_open(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(1)
        return original(*args, **kwargs)

    stop, thread = _start(socket_path)  # default handlers: client_app.train / evaluate
    try:
        deployment.LocalDeployment.open = counting_open  # type: ignore[method-assign]
        eps = []
        for server_round in (1, 2):
            reply = client_app.train(_train_message(server_round, arrays), context)
            metrics = reply.content["metrics"]
            assert metrics["abstained"] == 0 and metrics["num-examples"] > 0
            assert set(reply.content["arrays"].keys()) == {"adapter.proj.weight", "adapter.proj.bias"}
            eps.append(metrics["epsilon"])
        scores = client_app.evaluate(
            node_message(
                RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 2})}),
                MessageType.EVALUATE,
                run_id=7,
                message_id="e2",
            ),
            context,
        ).content["metrics"]
    finally:
        deployment.LocalDeployment.open = original  # type: ignore[method-assign]
        stop.set()
        thread.join(10)
    assert 0 < eps[0] < eps[1] <= config.target_epsilon + 1e-6
    ledger = PrivacyLedger.from_flat(dict(context.state.config_records[client_app.LEDGER_STATE_KEY]))
    assert ledger.epsilon(config.target_delta) == pytest.approx(eps[1])
    assert 0.0 <= scores["R@1"] <= 1.0
    assert len(opened) == 1  # built once, then kept loaded for round 2 and the evaluation
