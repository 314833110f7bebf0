"""Process supervision for a real Flower deployment on 127.0.0.1: one ``flower-superlink``, N ``flower-supernode``s and
``flwr run``, with fault injection (kill a SuperNode mid-round, restart it) and guaranteed
clean-up of every process it started (and of their children, e.g. SuperExec and ClientApps).

Used by ``softcar-fed local``, the tests and the benchmark. Nothing here is simulated: the app
runs exactly as in a deployment, over Flower's HTTP Fleet API.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from softcar_federated.node_worker import is_listening

logger = logging.getLogger(__name__)

CONNECTION = "softcar-local"
APP_DIR = Path(__file__).resolve().parent.parent


class LaunchError(RuntimeError):
    """A Flower process failed to start, or a run did not finish in time."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (bind to 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_executable(name: str) -> str:
    """Flower's console scripts next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def toml_value(value: Any) -> str:
    """A run-config / node-config value in the TOML syntax Flower parses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def config_string(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (psutil: Linux, macOS, Windows), to reap what Flower detaches."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@dataclass
class TLSFiles:
    """PEM files: a CA and a server certificate for 127.0.0.1 signed by it."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen
    log_path: Path
    descendants: set[int] = field(default_factory=set)

    def refresh_descendants(self) -> None:
        if self.process.poll() is None:
            self.descendants.update(descendants(self.process.pid))

    def stop(self, kill: bool = False, grace: float = 10.0) -> None:
        """SIGTERM (or SIGKILL) the process group, wait, then reap detached descendants."""
        self.refresh_descendants()
        sig = signal.SIGKILL if kill else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=grace)
        deadline = time.monotonic() + (0 if kill else grace)
        for pid in sorted(self.descendants):
            while is_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if is_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


class LocalFederation:
    """Start/stop a SuperLink and SuperNodes on loopback; a context manager that always cleans up.

    Args:
        work_dir: holds FLWR_HOME, logs and (by default) the app's output dir.
        tls: serve the Fleet/Control APIs over TLS with these files (insecure when None).
        supernode_auth: require registered SuperNode keys (``--enable-supernode-auth``).
        node_threads: CPU threads per SuperNode and worker (``OMP_NUM_THREADS``; None: the
            libraries' default, every core). Several deployments on one machine otherwise each
            start a thread per core and spend their time contending for them.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike[str] | None = None,
        *,
        app_dir: str | os.PathLike[str] = APP_DIR,
        tls: TLSFiles | None = None,
        supernode_auth: bool = False,
        startup_timeout: float = 60.0,
        node_threads: int | None = None,
    ) -> None:
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="softcar-fed-")
        self.work_dir = Path(work_dir or self._tmp.name).resolve()  # type: ignore[union-attr]
        self.app_dir = Path(app_dir).resolve()
        self.tls = tls
        self.supernode_auth = supernode_auth
        self.startup_timeout = startup_timeout
        self.node_threads = node_threads
        self.flwr_home = self.work_dir / "flwr-home"
        self.logs = self.work_dir / "logs"
        self.port = free_port()
        self.superlink: ManagedProcess | None = None
        self.nodes: dict[int, ManagedProcess] = {}
        self.node_configs: dict[int, dict[str, Any]] = {}
        self.node_keys: dict[int, Path] = {}
        self.workers: dict[int, ManagedProcess] = {}
        self.worker_sockets: dict[int, Path] = {}
        self._socket_dir: tempfile.TemporaryDirectory[str] | None = None
        self.runs: list[ManagedProcess] = []
        self._starts = 0

    # ------------------------------------------------------------------ plumbing
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "FLWR_HOME": str(self.flwr_home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_TELEMETRY_ENABLED": "0",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def node_env(self) -> dict[str, str]:
        """:meth:`env`, with the thread limit of a SuperNode, its ClientApps and its worker."""
        env = self.env()
        if self.node_threads is not None:
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[key] = str(self.node_threads)
        return env

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        log_path = self.logs / f"{name}-{self._starts}.log"
        handle = open(log_path, "wb")  # noqa: SIM115 - closed when the process is reaped
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env or self.env(),
            cwd=self.work_dir,
            start_new_session=True,  # own process group: one killpg reaches its children
        )
        handle.close()
        logger.info("started %s (pid %d): %s", name, process.pid, " ".join(command))
        return ManagedProcess(name, process, log_path)

    def _write_flwr_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = [
            "[superlink]",
            f'default = "{CONNECTION}"',
            "",
            f"[superlink.{CONNECTION}]",
            f'address = "{self.address}"',
        ]
        if self.tls is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.tls.ca_cert}"')
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _wait_health(self) -> None:
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://{self.address}/health"
        deadline = time.monotonic() + self.startup_timeout
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        while time.monotonic() < deadline:
            assert self.superlink is not None
            if self.superlink.process.poll() is not None:
                raise LaunchError(
                    f"flower-superlink exited early; see {self.superlink.log_path}:\n{self.tail(self.superlink)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise LaunchError(f"flower-superlink not healthy after {self.startup_timeout}s")

    @staticmethod
    def tail(process: ManagedProcess, chars: int = 4000) -> str:
        try:
            return process.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ lifecycle
    def start_superlink(self) -> None:
        self._write_flwr_config()
        command = [
            flower_executable("flower-superlink"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.tls is None:
            command.append("--insecure")
        else:
            command += [
                "--ssl-certfile",
                str(self.tls.server_cert),
                "--ssl-keyfile",
                str(self.tls.server_key),
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
            ]
        if self.supernode_auth:
            command.append("--enable-supernode-auth")
        self.superlink = self._spawn("superlink", command)
        self._wait_health()
        self.superlink.refresh_descendants()

    def register_node_key(self, index: int, private_key: Path, public_key: Path) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``)."""
        result = subprocess.run(
            [flower_executable("flwr"), "supernode", "register", str(public_key), CONNECTION],
            env=self.env(),
            cwd=self.work_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise LaunchError(f"flwr supernode register failed: {result.stdout}\n{result.stderr}")
        self.node_keys[index] = private_key

    def start_worker(self, index: int) -> Path:
        """Start (or restart) node ``index``'s long-lived worker (``softcar-fed worker``) and wait
        until it listens; returns its socket, for the node config's ``worker``."""
        if self._socket_dir is None:  # short: a Unix-domain socket path has ~100 bytes at most
            self._socket_dir = tempfile.TemporaryDirectory(prefix="softcar-w-")
        path = self.worker_sockets.setdefault(index, Path(self._socket_dir.name) / f"node-{index}.sock")
        command = [sys.executable, "-m", "softcar_federated.cli", "worker", "--socket", str(path), "-v"]
        process = self._spawn(f"worker-{index}", command, self.node_env())
        self.workers[index] = process

        def listening() -> bool:
            if process.process.poll() is not None:
                raise LaunchError(f"worker {index} exited ({process.process.returncode}):\n{self.tail(process)}")
            return is_listening(path)

        wait_for(listening, self.startup_timeout * 3, what=f"worker {index} to listen on {path}")
        return path

    def start_node(
        self, index: int, node_config: dict[str, Any] | None = None, *, worker: bool = False
    ) -> ManagedProcess:
        """Start (or restart) SuperNode ``index``; a restart reuses its node config and work dir,
        and its worker: ``worker`` starts one beside it first (its retriever then stays loaded
        across rounds; ``softcar_federated.node_worker``)."""
        if node_config is not None:
            self.node_configs[index] = dict(node_config)
        if worker or index in self.worker_sockets:
            if index not in self.workers or self.workers[index].process.poll() is not None:
                self.node_configs[index]["worker"] = str(self.start_worker(index))
        command = [
            flower_executable("flower-supernode"),
            "--superlink",
            self.address,
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--node-config",
            config_string(self.node_configs[index]),
        ]
        if self.tls is None:
            command.append("--insecure")
        else:
            command += ["--root-certificates", str(self.tls.ca_cert)]
        if index in self.node_keys:
            command += ["--auth-supernode-private-key", str(self.node_keys[index])]
        process = self._spawn(f"supernode-{index}", command, self.node_env())
        self.nodes[index] = process
        return process

    def kill_node(self, index: int) -> None:
        """SIGKILL a SuperNode and its ClientApp (and its worker): a crash, not a clean shutdown."""
        node = self.nodes[index]
        node.stop(kill=True)
        if index in self.workers:
            self.workers[index].stop(kill=True)
        logger.info("killed supernode %d (pid %d)", index, node.process.pid)

    def connected_nodes(self) -> int:
        """How many SuperNodes the SuperLink lists as online (``flwr supernode ls``)."""
        result = subprocess.run(
            [flower_executable("flwr"), "supernode", "ls", CONNECTION, "--format", "json"],
            env=self.env(),
            cwd=self.work_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            payload = json.loads(result.stdout)
        except ValueError:
            return 0
        nodes = payload.get("nodes", [])
        return sum(1 for n in nodes if str(n.get("status", "")).lower() == "online")

    def run(self, run_config: dict[str, Any]) -> ManagedProcess:
        """``flwr run <app> softcar-local --stream``: returns the (streaming) CLI process."""
        command = [flower_executable("flwr"), "run", str(self.app_dir), CONNECTION, "--stream"]
        if run_config:
            command += ["--run-config", config_string(run_config)]
        process = self._spawn("flwr-run", command)
        self.runs.append(process)
        return process

    def stop(self) -> None:
        """Stop runs, SuperNodes, then the SuperLink (which stops its SuperExec and ServerApp)."""
        for managed in [*self.runs, *self.nodes.values(), *self.workers.values()]:
            managed.refresh_descendants()
        if self.superlink:
            self.superlink.refresh_descendants()
        for managed in self.runs:
            managed.stop(kill=True)
        for managed in [*self.nodes.values(), *self.workers.values()]:
            managed.stop()
        if self.superlink is not None:
            self.superlink.stop()
        if self._socket_dir is not None:
            self._socket_dir.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def all_pids(self) -> list[int]:
        """Every pid this federation started or saw as a descendant (for leak checks)."""
        pids: set[int] = set()
        managed_processes = [*self.runs, *self.nodes.values(), *self.workers.values()]
        for managed in [*managed_processes, *([self.superlink] if self.superlink else [])]:
            pids.add(managed.process.pid)
            pids.update(managed.descendants)
        return sorted(pids)


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise LaunchError(f"timed out after {timeout:.0f}s waiting for {what}")


def read_rounds(output_dir: Path) -> list[dict]:
    path = output_dir / "server" / "rounds.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["rounds"]
    except (OSError, ValueError, KeyError):
        return []
