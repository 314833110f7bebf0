"""``softcar-fed``: run a local federation, or opt a deployment into a real one."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _default_dataset() -> str:
    """The packaged chatterbot_qa set, else the Python-FAQ set in ``shared/`` beside the repo."""
    try:
        from softcar import packaged_dataset_path

        return str(packaged_dataset_path("chatterbot_qa"))
    except Exception:  # noqa: BLE001 - the packaged set may not be there yet
        return str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "python-faq")


@app.command()
def local(
    clients: int = typer.Option(2, help="Number of flower-supernode processes."),
    rounds: int = typer.Option(3, help="Federated rounds."),
    target_epsilon: float = typer.Option(8.0, help="Per-client ε budget (inf: no DP noise)."),
    kill_client_at_round: int | None = typer.Option(None, help="SIGKILL the last SuperNode during this round."),
    rejoin: bool = typer.Option(True, help="Restart the killed SuperNode after its round."),
    dataset: str = typer.Option("", help="BEIR folder (default: the packaged chatterbot_qa set)."),
    encoder: str = typer.Option("", help="Base SLM folder (default: packaged all-MiniLM-L6-v2)."),
    mode: str = typer.Option("adapter+head", help="'adapter' or 'adapter+head'."),
    iid: bool = typer.Option(False, help="IID split instead of by-topic (non-IID)."),
    dp: str = typer.Option(
        "client",
        help="'client' (Opacus DP-SGD per example), 'client-level' (DP-FedAvg per deployment), "
        "'server' (central DP) or 'none'.",
    ),
    clients_per_round: int = typer.Option(0, help="dp=client-level: clients sampled per round (0: all)."),
    local_parts: str = typer.Option("adapter+head", help="What local training updates: 'adapter+head' or 'head'."),
    warm_start: bool = typer.Option(False, help="Server pre-trains on the public documents (no user questions)."),
    strategy: str = typer.Option("fedavg", help="fedavg | fedavgm | fedprox | fedadam."),
    server_learning_rate: float = typer.Option(
        0.0, help="fedavgm/fedadam server learning rate (0: Flower's default; fedavgm: ~clients per round)."
    ),
    server_momentum: float = typer.Option(0.0, help="fedavgm server momentum."),
    local_epochs: int = typer.Option(1),
    batch_size: int = typer.Option(32),
    max_query_length: int = typer.Option(32),
    pseudo_queries: int = typer.Option(2, help="Pseudo-queries drawn per document."),
    centralized: bool = typer.Option(True, help="Also train without FL, for comparison."),
    secagg: bool = typer.Option(
        False, "--secagg", help="Flower SecAgg+: the server sees only the sum of updates (>= 2 clients per round)."
    ),
    node_workers: bool = typer.Option(
        True, help="A long-lived worker per SuperNode keeps its retriever loaded across rounds."
    ),
    node_threads: int = typer.Option(
        0, help="CPU threads per SuperNode and its worker (0: this machine's cores shared out, at least 1)."
    ),
    work_dir: Path | None = typer.Option(None, help="Keep logs/outputs here (default: a temp dir)."),
    timeout: float = typer.Option(1800.0, help="Give up (and stop everything) after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON summary."),
    verbose: bool = typer.Option(False, "-v", help="Log progress to stderr."),
) -> None:
    """Real flower-superlink + N flower-supernodes on 127.0.0.1; last line: a JSON summary."""
    # Imported here, not at the top: torch/transformers/flwr take seconds and `--help` should not.
    from softcar import jsonable
    from softcar.errors import SoftcarError
    from softcar_federated.config import FedConfig
    from softcar_federated.local_experiment import LocalRunSpec, run_local
    from softcar_federated.secure_aggregation import check_config

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    spec = LocalRunSpec(
        clients=clients,
        rounds=rounds,
        target_epsilon=target_epsilon,
        kill_client_at_round=kill_client_at_round,
        rejoin=rejoin,
        dataset=dataset or _default_dataset(),
        encoder=encoder,
        mode=mode,
        iid=iid,
        dp=dp,
        clients_per_round=clients_per_round,
        local_parts=local_parts,
        warm_start=warm_start,
        strategy=strategy,
        server_learning_rate=server_learning_rate,
        server_momentum=server_momentum,
        local_epochs=local_epochs,
        batch_size=batch_size,
        max_query_length=max_query_length,
        pseudo_queries_per_document=pseudo_queries,
        centralized=centralized,
        node_workers=node_workers,
        node_threads=node_threads,
        work_dir=str(work_dir) if work_dir else None,
        timeout=timeout,
        extra_run_config={"secure-aggregation": True} if secagg else {},
    )
    try:  # refuse an unworkable combination before starting any process
        check_config(FedConfig.from_run_config(spec.run_config(Path("output"))))
    except SoftcarError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    # SIGTERM → SystemExit, so the LocalFederation context manager stops every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    summary = run_local(spec)
    if not as_json:
        typer.echo(
            f"rounds completed: {summary['rounds_completed']}  clients: {summary['clients']}  "
            f"ε={summary['epsilon']}  δ={summary['delta']}",
            err=True,
        )
        typer.echo(
            f"initial {summary['initial']}  final {summary['final']}  "
            f"centralized {summary.get('centralized', {}).get('final')}",
            err=True,
        )
    typer.echo(json.dumps(jsonable(summary)))


@app.command()
def worker(
    socket_path: Path = typer.Option(..., "--socket", help="Unix-domain socket to listen on (node config worker=...)."),
    verbose: bool = typer.Option(False, "-v", help="Log each answered message to stderr."),
) -> None:
    """Keep this SuperNode's retriever loaded across rounds: answer its training and evaluation
    messages from one long-lived process (start it before the SuperNode; Ctrl-C stops it)."""
    from softcar_federated.node_worker import NodeWorkerError, serve

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(socket_path, stop=stop.is_set)
    except NodeWorkerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        pass


@app.command()
def join(
    config: Path = typer.Argument(..., help="TOML/JSON FederationConfig (superlink, checkpoint, work_dir, ...)."),
) -> None:
    """Contribute this deployment to a federation until interrupted (Ctrl-C leaves)."""
    from softcar_federated.optin import FederationConfig
    from softcar_federated.optin import join as join_federation

    membership = join_federation(FederationConfig.load(config))
    typer.echo(
        f"joined {membership.config.superlink} (supernode pid {membership.process.process.pid}); "
        f"log: {membership.process.log_path}; Ctrl-C to leave",
        err=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set() and membership.process.process.poll() is None:
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        membership.leave()
    typer.echo("left the federation; the local retriever was not modified", err=True)


if __name__ == "__main__":  # pragma: no cover
    app()
