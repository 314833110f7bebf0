"""A long-lived worker beside each SuperNode, so its loaded retriever survives across rounds.

Flower 1.41's SuperNode starts a fresh ClientApp process for every message (deployment mode),
so every training round paid for importing torch/transformers, building the retriever and
opening the federated copy again, before any training. With node config ``worker=<socket>``
the ClientApp's handlers hand the message and the node's context to a worker process that the
operator keeps running beside the SuperNode (``softcar-fed worker --socket <socket>``). It runs
the very same handler with everything already loaded and returns the reply and the updated
context state (privacy ledger, noise plan), which the ClientApp hands back to the SuperNode.
The fresh ClientApp process then imports only Flower.

What stays in the ClientApp process: the mods (audit log, SecAgg+ masking, client-level
clipping), so the audit log still records what actually leaves the node.

The wire is a Unix-domain socket that only the node's own user may open (mode 0600 in a
folder of mode 0700). Messages and contexts travel as Flower's own protobuf encoding, the one
the SuperNode and ClientApp use between themselves. Nothing is pickled. The worker answers one
message at a time, as a SuperNode sends them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

logger = logging.getLogger(__name__)

WORKER_KEY = "worker"
"""Node-config key: the worker's socket path."""
MAX_SOCKET_PATH = 100
"""Unix-domain socket paths are limited to about 108 bytes on Linux."""
MAX_FRAME_BYTES = 4 << 30
_HEADER = struct.Struct(">I")

Handler = Callable[[Message, Context], Message]


class NodeWorkerError(RuntimeError):
    """The node's worker cannot be reached, or it sent something that is not a worker reply."""


def worker_socket(context: Context) -> str | None:
    """The socket this node's handlers delegate to (``None``: run here; the worker removes the
    key from the contexts it hands its handlers)."""
    path = context.node_config.get(WORKER_KEY)
    return str(path) if path else None


def check_socket_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path``, or a clear error if no Unix-domain socket can have it."""
    path = Path(path)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise NodeWorkerError(
            f"worker socket path is {len(os.fsencode(path))} bytes, over the {MAX_SOCKET_PATH} a Unix-domain "
            f"socket allows: {path}"
        )
    return path


def is_listening(path: str | os.PathLike[str]) -> bool:
    """Whether a worker (or anything) accepts connections on ``path`` now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------- framing
def _send(sock: socket.socket, header: dict[str, object], blobs: list[bytes]) -> None:
    head = json.dumps({**header, "sizes": [len(b) for b in blobs]}).encode()
    sock.sendall(_HEADER.pack(len(head)) + head)
    for blob in blobs:
        sock.sendall(blob)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise NodeWorkerError("the connection closed mid-frame (did the other side crash?)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(sock: socket.socket) -> tuple[dict, list[bytes]]:
    (length,) = _HEADER.unpack(_read_exactly(sock, _HEADER.size))
    if length > 1 << 20:
        raise NodeWorkerError(f"malformed worker frame: a {length}-byte header")
    try:
        header = json.loads(_read_exactly(sock, length))
        sizes = [int(s) for s in header["sizes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise NodeWorkerError(f"malformed worker frame header: {exc}") from exc
    if any(s < 0 for s in sizes) or sum(sizes) > MAX_FRAME_BYTES:
        raise NodeWorkerError(f"malformed worker frame: blob sizes {sizes}")
    return header, [_read_exactly(sock, s) for s in sizes]


def _encode(message: Message, context: Context) -> list[bytes]:
    return [message_to_proto(message).SerializeToString(), context_to_proto(context).SerializeToString()]


def _decode(blobs: list[bytes]) -> tuple[Message, Context]:
    if len(blobs) != 2:
        raise NodeWorkerError(f"malformed worker frame: {len(blobs)} parts, expected a message and a context")
    try:
        return message_from_proto(ProtoMessage.FromString(blobs[0])), context_from_proto(
            ProtoContext.FromString(blobs[1])
        )
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError, among others
        raise NodeWorkerError(f"malformed worker frame: not a Flower message and context ({exc})") from exc


# ---------------------------------------------------------------------------------- ClientApp side
def delegate(kind: str, message: Message, context: Context, path: str, timeout: float | None = None) -> Message:
    """Have the worker at ``path`` run handler ``kind`` on ``message``; ``context.state`` is updated
    in place with the worker's, so the SuperNode keeps what the handler stored there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise NodeWorkerError(
                f"node config worker={path}: no worker listens there ({exc.strerror or exc}); start it with "
                f"`softcar-fed worker --socket {path}` before the SuperNode, or remove worker= from the node config"
            ) from exc
        try:
            _send(sock, {"kind": kind}, _encode(message, context))
            header, blobs = _receive(sock)
        except TimeoutError as exc:
            raise NodeWorkerError(f"the worker at {path} did not answer the {kind} message within {timeout}s") from exc
        except OSError as exc:
            raise NodeWorkerError(f"the connection to the worker at {path} failed: {exc}") from exc
    if not header.get("ok"):
        reason = header.get("error", "no reason given")
        raise NodeWorkerError(f"the worker at {path} failed the {kind} message: {reason}")
    reply, worker_context = _decode(blobs)
    context.state = worker_context.state
    return reply


# ---------------------------------------------------------------------------------- worker side
def _listen(path: Path) -> socket.socket:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if folder.stat().st_uid == os.getuid():
        folder.chmod(stat.S_IRWXU)  # nobody else may even look up the socket
    if path.exists():
        if is_listening(path):
            raise NodeWorkerError(f"another worker already listens on {path}")
        path.unlink()  # a stale socket of a worker that died
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(4)
    return server


def serve(
    path: str | os.PathLike[str],
    handlers: dict[str, Handler] | None = None,
    *,
    preload: bool = True,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Answer delegated messages on ``path`` until ``stop()`` is true (checked every second).

    ``handlers`` default to the ClientApp's own ``train`` and ``evaluate``. ``preload`` imports
    the training stack now, so the first round does not pay for it either.
    """
    socket_path = check_socket_path(path)
    if handlers is None:
        from softcar_federated import client_app

        handlers = {"train": client_app.train, "evaluate": client_app.evaluate}
    if preload:
        started = time.perf_counter()
        import opacus  # noqa: F401
        import torch  # noqa: F401

        import softcar  # noqa: F401
        from softcar_federated import deployment, local_training  # noqa: F401

        logger.info("worker: training stack imported in %.1fs", time.perf_counter() - started)
    server = _listen(socket_path)
    server.settimeout(1.0)
    logger.info("worker: listening on %s (pid %d)", socket_path, os.getpid())
    try:
        while not stop():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                _answer(connection, handlers)
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def _answer(connection: socket.socket, handlers: dict[str, Handler], request_timeout: float = 300.0) -> None:
    try:
        connection.settimeout(request_timeout)  # a client that connects and sends nothing
        header, blobs = _receive(connection)
        connection.settimeout(None)  # the handler may train for as long as the round allows
        kind = header.get("kind")
        if kind not in handlers:
            raise NodeWorkerError(f"unknown message kind {kind!r} (expected one of {sorted(handlers)})")
        message, context = _decode(blobs)
        context.node_config.pop(WORKER_KEY, None)  # the handler runs here, it must not delegate again
    except (NodeWorkerError, OSError) as exc:
        logger.warning("worker: refused a request: %s", exc)
        with contextlib.suppress(OSError):
            _send(connection, {"ok": False, "error": str(exc)}, [])
        return
    started = time.perf_counter()
    try:
        reply = handlers[kind](message, context)
    except Exception as exc:  # noqa: BLE001 - reported to the ClientApp, which fails the round
        logger.exception("worker: %s handler raised", kind)
        with contextlib.suppress(OSError):
            _send(connection, {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, [])
        return
    logger.info("worker: answered a %s message in %.2fs", kind, time.perf_counter() - started)
    with contextlib.suppress(OSError):
        _send(connection, {"ok": True}, _encode(reply, context))
