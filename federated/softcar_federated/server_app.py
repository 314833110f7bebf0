"""The Flower ServerApp: runs the strategy, saves the global model as a softcar checkpoint after
every round, evaluates it on held-out queries, and writes ``rounds.json`` + ``rounds.png``.

The server holds a reference retriever over the run's ``dataset`` corpus (when one is given):
with a shared head it *is* the global model; in adapter mode its head is re-embedded through the
global adapter each round, i.e. the global adapter is evaluated as an inner-product retriever.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp

from softcar import ClassifierRetriever, Document, atomic_directory, write_json, write_tensors
from softcar_federated import partitions, secure_aggregation
from softcar_federated.config import FedConfig
from softcar_federated.deployment import dataset_split, default_output_dir
from softcar_federated.local_training import warm_start
from softcar_federated.roundlog import plot_rounds
from softcar_federated.strategy import ClientLevelDP, GuardedStrategy, build_strategy, central_epsilon
from softcar_federated.validation import spec_of, validate_arrays

logger = logging.getLogger(__name__)

app = ServerApp()


class GlobalModel:
    """The server's copy of the global model, its evaluation and its per-round outputs."""

    def __init__(self, config: FedConfig, output_dir: Path) -> None:
        self.config = config
        self.output_dir = output_dir
        self.split = dataset_split(config) if config.dataset else None
        documents = self.split.corpus if self.split else [Document(id="placeholder", text="shape reference only")]
        self.retriever: ClassifierRetriever = partitions.build_retriever(
            documents,
            config.encoder,
            config.adapter,
            max_query_length=config.max_query_length,
            pseudo_queries=config.pseudo_queries_per_document,
            seed=config.seed,
        )
        self.warm_start_s: float | None = None
        if config.warm_start and self.split is not None:
            began = time.perf_counter()
            warm_start(self.retriever, config.train_config(), config.local_epochs)
            self.warm_start_s = time.perf_counter() - began
        self.rounds: list[dict] = []
        self.best: dict | None = None
        self.started = time.perf_counter()

    def initial_arrays(self) -> ArrayRecord:
        return ArrayRecord(torch_state_dict=self.retriever.trainable_state_dict(parts=self.config.shared_parts))

    def train_config(self) -> ConfigRecord:
        record = ConfigRecord()
        if self.config.mode == "adapter+head":
            record["doc-ids-sha256"] = partitions.doc_ids_digest(self.retriever.documents)
        return record

    def load(self, arrays: ArrayRecord) -> None:
        state = {k: v.float() for k, v in arrays.to_torch_state_dict().items()}
        self.retriever.load_trainable_state_dict(state, strict=True)
        if self.config.mode == "adapter" and self.split is not None:
            # No shared head: index the server's corpus through the global adapter.
            rows = self.retriever.embed_documents([d.text for d in self.retriever.documents])
            self.retriever.load_trainable_state_dict({"head.weight": rows}, strict=True)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> dict[str, float] | None:
        self.load(arrays)
        round_dir = self.output_dir / "global" / f"round-{server_round:03d}"
        if self.split is not None:
            self.retriever.save(round_dir)
            self.retriever.save(self.output_dir / "global" / "latest")
            scores = partitions.quality(self.retriever, self.split.heldout)
            if self.best is None or scores["R@1"] > self.best["server_eval"]["R@1"]:
                # A noisy (DP) round can lower quality: the server keeps the best global model
                # by its own held-out evaluation, so the federation never ends below its start.
                self.retriever.save(self.output_dir / "global" / "best")
                self.best = {"round": server_round, "server_eval": scores}
            return scores
        # No corpus on the server: keep the adapter tensors alone (still safetensors, still atomic).
        with atomic_directory(round_dir) as tmp:
            write_tensors(tmp / "adapter.safetensors", self.retriever.trainable_state_dict(parts=("adapter",)))
        return None


def _metric_dict(record: MetricRecord | None) -> dict[str, float] | None:
    if record is None:
        return None
    return {k: (float(v) if not isinstance(v, list) else [float(x) for x in v]) for k, v in record.items()}  # type: ignore[misc]


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation for ``num-server-rounds`` and write the round log, plot and summary."""
    config = FedConfig.from_run_config(context.run_config)
    secure_aggregation.check_config(config)  # refuse what cannot work before contacting a node
    output_dir = default_output_dir(config, context.run_id) / "server"
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = GlobalModel(config, output_dir)
    initial = model.initial_arrays()
    spec = spec_of(initial)
    # The Message-API strategy (behind the update guard); SecAgg+ runs Flower's own workflow instead.
    strategy: GuardedStrategy | None = None if config.secure_aggregation else build_strategy(config, spec)
    client_level = strategy.strategy if strategy is not None and isinstance(strategy.strategy, ClientLevelDP) else None
    releases = 0
    last_epsilon: float = (
        0.0 if config.dp != "none" and not (config.dp == "client" and math.isinf(config.target_epsilon)) else math.inf
    )

    def record_round(
        server_round: int, arrays: ArrayRecord, audit: object | None, train: dict | None, federated: dict | None
    ) -> dict[str, float] | None:
        """Evaluate the global model, update ε, and append the round to rounds.json / rounds.png."""
        nonlocal releases, last_epsilon
        scores = model.evaluate(server_round, arrays)
        if server_round > 0 and audit is not None and getattr(audit, "accepted", None):
            releases += 1
        if config.dp == "server":
            last_epsilon = central_epsilon(config, releases)
        elif client_level is not None:
            last_epsilon = client_level.epsilon()
        elif config.client_dp_enabled and train and "epsilon" in train:
            last_epsilon = max(last_epsilon, float(train["epsilon"]))
        entry = {
            "round": server_round,
            "elapsed_s": round(time.perf_counter() - model.started, 3),
            "accepted": getattr(audit, "accepted", []),
            "rejected": getattr(audit, "rejected", []),
            "abstained": getattr(audit, "abstained", []),
            "failed": getattr(audit, "failed", []),
            "not_released": client_level.skipped.get(server_round) if client_level is not None else None,
            "train_phase_s": getattr(audit, "train_phase_s", None),
            "train": train,
            "federated_eval": federated,
            "server_eval": scores,
            "epsilon": last_epsilon,
            "delta": config.target_delta,
            "secure_aggregation": config.secure_aggregation,
        }
        model.rounds.append(entry)
        write_json(output_dir / "rounds.json", {"config": config.model_dump(), "rounds": model.rounds})
        plot_rounds(model.rounds, output_dir / "rounds.png")
        logger.info("round %d: %s ε=%s", server_round, scores, last_epsilon)
        return scores

    if config.secure_aggregation:
        # Flower's SecAgg+ workflow: only the sum of the updates is ever unmasked on the server.
        secure_aggregation.run_secure_aggregation(
            grid,
            context,
            config,
            initial,
            dict(model.train_config()),
            evaluate=lambda r, arrays, audit: record_round(r, arrays, audit, audit.metrics if audit else None, None),
            check_aggregate=lambda arrays: validate_arrays(arrays, spec),
        )
    else:
        assert strategy is not None
        _run_strategy(grid, config, model, initial, strategy, record_round)
    completed = sum(1 for r in model.rounds if r["round"] > 0)
    write_json(
        output_dir / "summary.json",
        {
            "rounds_completed": completed,
            "rounds_with_updates": releases,
            "epsilon": last_epsilon,
            "delta": config.target_delta,
            "initial": {
                "server_eval": model.rounds[0]["server_eval"] if model.rounds else None,
                "federated_eval": None,
            },
            "final": {
                "server_eval": model.rounds[-1]["server_eval"] if model.rounds else None,
                "federated_eval": model.rounds[-1]["federated_eval"] if model.rounds else None,
            },
            "best": model.best,
            "warm_start_s": model.warm_start_s,
            "elapsed_s": round(time.perf_counter() - model.started, 3),
        },
    )


def _run_strategy(
    grid: Grid,
    config: FedConfig,
    model: GlobalModel,
    initial: ArrayRecord,
    strategy: GuardedStrategy,
    record_round: Callable[..., dict[str, float] | None],
) -> None:
    """Flower's Message-API strategy behind the update guard (every reply validated on the server)."""
    train_metrics: dict[int, MetricRecord] = {}
    eval_metrics: dict[int, MetricRecord] = {}
    original_train, original_eval = strategy.aggregate_train, strategy.aggregate_evaluate

    def aggregate_train(
        server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = original_train(server_round, replies)
        if metrics is not None:
            train_metrics[server_round] = metrics
        return arrays, metrics

    def aggregate_evaluate(server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = original_eval(server_round, replies)
        if metrics is not None:
            eval_metrics[server_round] = metrics
        return metrics

    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
    strategy.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        scores = record_round(
            server_round,
            arrays,
            strategy.audits.get(server_round),
            _metric_dict(train_metrics.get(server_round)),
            _metric_dict(eval_metrics.get(server_round)),
        )
        return MetricRecord({k: float(v) for k, v in scores.items()}) if scores else None

    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.num_server_rounds,
        timeout=config.round_timeout,
        train_config=model.train_config(),
        evaluate_config=model.train_config(),
        evaluate_fn=evaluate_fn,
    )
