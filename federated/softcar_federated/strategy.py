"""Strategy wiring: Flower's FedAvg / FedProx / FedAdam, optional central DP, and a guard in
front of them that drops malformed updates and budget-exhausted clients before aggregation."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from softcar_federated.config import FedConfig
from softcar_federated.privacy import epsilon_of
from softcar_federated.validation import MalformedUpdateError, Spec, is_abstention, validate_reply

logger = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"
UNIFORM_WEIGHT_KEY = "unit-weight"
"""Central DP bounds each client's influence by the clipping norm only if clients weigh the same."""


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of losses, but ε is a per-client guarantee: report the max (the weakest)."""
    metrics = aggregate_metricrecords(records, weight_key)
    epsilons = [float(next(iter(r.metric_records.values())).get("epsilon", 0.0)) for r in records]
    if epsilons:
        metrics["epsilon"] = max(epsilons)
        metrics["epsilon-min"] = min(epsilons)
    metrics["clients"] = len(records)
    return metrics


@dataclass
class RoundAudit:
    """What the guard saw in one round: for the round log."""

    accepted: list[int] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    abstained: list[int] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


class GuardedStrategy(Strategy):
    """Wraps any Flower strategy: each training reply is validated against the global model's
    key/shape spec and checked for NaN/Inf; failures are logged and never aggregated.

    Everything else (sampling, aggregation, DP noise) is the wrapped Flower strategy's.
    """

    def __init__(self, strategy: Strategy, spec: Spec, weight_key: str = WEIGHT_KEY) -> None:
        self.strategy = strategy
        self.spec = dict(spec)
        self.weight_key = weight_key
        self.audits: dict[int, RoundAudit] = {}

    def summary(self) -> None:
        logger.info("guarded strategy: %d tensors validated per update", len(self.spec))
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        audit = self.audits.setdefault(server_round, RoundAudit())
        kept: list[Message] = []
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                audit.failed.append({"node": node, "reason": str(reply.error.reason)})
                logger.warning("round %d: node %d failed: %s", server_round, node, reply.error.reason)
                continue
            try:
                if is_abstention(reply):
                    audit.abstained.append(node)
                    logger.info("round %d: node %d abstained (privacy budget spent)", server_round, node)
                    continue
                validate_reply(reply, self.spec, self.weight_key)
            except MalformedUpdateError as exc:
                audit.rejected.append({"node": node, "key": exc.key, "reason": str(exc)})
                logger.warning("round %d: rejected update from node %d: %s", server_round, node, exc)
                continue
            audit.accepted.append(node)
            kept.append(reply)
        if not kept:
            logger.warning("round %d: no valid update; the global model is unchanged", server_round)
            return None, None
        return self.strategy.aggregate_train(server_round, kept)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ok = []
        for reply in replies:  # a node with nothing held out reports weight 0: it cannot be averaged
            if reply.has_error() or len(reply.content.metric_records) != 1:
                continue
            weight = next(iter(reply.content.metric_records.values())).get(self.weight_key, 0)
            if isinstance(weight, (int, float)) and weight > 0:
                ok.append(reply)
        if not ok:
            return None
        return self.strategy.aggregate_evaluate(server_round, ok)


def build_strategy(config: FedConfig, spec: Spec) -> GuardedStrategy:
    """FedAvg (default), FedProx or FedAdam from Flower, optionally inside Flower's server-side
    fixed-clipping central-DP wrapper, all behind the update guard."""
    weight_key = UNIFORM_WEIGHT_KEY if config.dp == "server" else WEIGHT_KEY
    common = dict(
        fraction_train=config.fraction_train,
        fraction_evaluate=1.0 if config.federated_evaluation else 0.0,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=config.min_train_nodes if config.federated_evaluation else 0,
        min_available_nodes=config.min_available_nodes,
        weighted_by_key=weight_key,
        train_metrics_aggr_fn=aggregate_train_metrics,
    )
    inner: Strategy
    if config.strategy == "fedavg":
        inner = FedAvg(**common)
    elif config.strategy == "fedprox":
        inner = FedProx(proximal_mu=config.proximal_mu, **common)
    elif config.strategy == "fedadam":
        inner = FedAdam(eta=config.server_learning_rate, **common)
    else:  # pragma: no cover - pydantic already restricts the names
        raise ValueError(f"unknown strategy {config.strategy!r}")
    if config.dp == "server":
        sampled = config.central_num_sampled_clients or config.min_train_nodes
        inner = DifferentialPrivacyServerSideFixedClipping(
            inner,
            noise_multiplier=config.central_noise_multiplier,
            clipping_norm=config.central_clipping_norm,
            num_sampled_clients=sampled,
        )
    return GuardedStrategy(inner, spec, weight_key)


def central_epsilon(config: FedConfig, releases: int) -> float:
    """ε of the central-DP releases so far (user-level, no sampling amplification), computed
    by Opacus' RDP accountant with sample rate 1: one Gaussian release per round."""
    if config.dp != "server" or releases == 0:
        return 0.0
    if config.central_noise_multiplier <= 0:
        return math.inf
    return epsilon_of([(config.central_noise_multiplier, 1.0, releases)], config.target_delta)
