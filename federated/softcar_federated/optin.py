"""Opting an existing softcar deployment into a federation.

A deployment that already serves a saved ``ClassifierRetriever`` writes a small config (TOML or
JSON) naming the server and its local files, then calls :func:`join` (or ``softcar-fed join``).
That starts a ``flower-supernode`` for this deployment; stopping it is all "leaving" takes. The
deployment's checkpoint is only read: the federated copy lives in ``work_dir``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from pydantic import BaseModel, ConfigDict, Field

from softcar import ClassifierRetriever
from softcar_federated.node_worker import NodeWorkerError, check_socket_path, is_listening
from softcar_federated.supervisor import ManagedProcess, config_string, flower_executable, free_port


class FederationConfig(BaseModel):
    """Where the server is and what this deployment contributes."""

    model_config = ConfigDict(extra="forbid")

    superlink: str = Field(..., description="SuperLink Fleet API address, host:port.")
    checkpoint: str = Field(..., description="The deployment's saved ClassifierRetriever (read only).")
    feedback: str | None = Field(None, description="JSONL of {'query','doc_id'} feedback pairs.")
    heldout: str | None = Field(None, description="Optional JSONL of pairs used only to evaluate.")
    work_dir: str = Field(..., description="Federated copy + privacy ledger (never the checkpoint).")
    insecure: bool = False
    root_certificates: str | None = Field(None, description="CA PEM that signed the SuperLink's certificate.")
    auth_private_key: str | None = Field(None, description="SuperNode private key (SuperNode authentication).")
    runtime_port: int | None = Field(None, description="Local port of the SuperNode's runtime API; None picks one.")
    worker_socket: str | None = Field(
        None,
        description="Start a long-lived worker on this Unix-domain socket beside the SuperNode, so the "
        "retriever stays loaded across rounds (softcar_federated.node_worker).",
    )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FederationConfig:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return cls.model_validate(data.get("federation", data))


@dataclass
class Membership:
    """A running SuperNode for this deployment; :meth:`leave` stops it (and its ClientApps and worker)."""

    process: ManagedProcess
    config: FederationConfig
    worker: ManagedProcess | None = None

    def leave(self) -> None:
        self.process.stop()
        if self.worker is not None:
            self.worker.stop()

    def federated_retriever(self) -> ClassifierRetriever | None:
        """The retriever as this deployment last trained it in the federation (None before)."""
        return federated_retriever(self.config.work_dir)


def federated_retriever(work_dir: str | os.PathLike[str]) -> ClassifierRetriever | None:
    copy = Path(work_dir) / "retriever"
    return ClassifierRetriever.load(copy) if (copy / "softcar.json").is_file() else None


def supernode_command(config: FederationConfig) -> list[str]:
    node_config = {
        "checkpoint": str(Path(config.checkpoint).resolve()),
        "work-dir": str(Path(config.work_dir).resolve()),
    }
    if config.feedback:
        node_config["feedback"] = str(Path(config.feedback).resolve())
    if config.heldout:
        node_config["heldout"] = str(Path(config.heldout).resolve())
    if config.worker_socket:
        node_config["worker"] = str(Path(config.worker_socket).resolve())
    command = [
        flower_executable("flower-supernode"),
        "--superlink",
        config.superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(config.runtime_port or free_port()),
        "--node-config",
        config_string(node_config),
    ]
    if config.insecure:
        command.append("--insecure")
    elif config.root_certificates:
        command += ["--root-certificates", str(config.root_certificates)]
    if config.auth_private_key:
        command += ["--auth-supernode-private-key", str(config.auth_private_key)]
    return command


def join(
    config: FederationConfig | str | os.PathLike[str], log_path: str | os.PathLike[str] | None = None
) -> Membership:
    """Start contributing: checks the checkpoint loads, then starts this deployment's SuperNode."""
    if not isinstance(config, FederationConfig):
        config = FederationConfig.load(config)
    ClassifierRetriever.load(config.checkpoint)  # fail here, not inside a ClientApp, if it is broken
    Path(config.work_dir).mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path else Path(config.work_dir) / "supernode.log"
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", HF_HUB_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    worker = _start_worker(config, env) if config.worker_socket else None
    handle = open(log, "ab")  # noqa: SIM115
    process = subprocess.Popen(
        supernode_command(config), stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    handle.close()
    return Membership(ManagedProcess("supernode", process, log), config, worker)


def _start_worker(config: FederationConfig, env: dict[str, str], timeout: float = 180.0) -> ManagedProcess:
    """``softcar-fed worker`` on ``config.worker_socket``, once it listens (it imports the training stack first)."""
    path = check_socket_path(Path(config.worker_socket or "").resolve())
    log = Path(config.work_dir) / "worker.log"
    handle = open(log, "ab")  # noqa: SIM115
    command = [sys.executable, "-m", "softcar_federated.cli", "worker", "--socket", str(path), "-v"]
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle.close()
    worker = ManagedProcess("worker", process, log)
    deadline = time.monotonic() + timeout
    while not is_listening(path):
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop(kill=True)
            raise NodeWorkerError(f"the worker for {path} did not start listening; see {log}")
        time.sleep(0.2)
    return worker
