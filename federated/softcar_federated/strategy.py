"""Strategy wiring: Flower's FedAvg / FedProx / FedAdam, optional central DP, and a guard in
front of them that drops malformed updates and budget-exhausted clients before aggregation."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from softcar_federated.config import FedConfig
from softcar_federated.privacy import ClientLevelDPError, ClientLevelPlan, epsilon_of, plan_client_level
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
    # Time to quality: the slowest client bounds a parallel round; the sum is what one machine ran.
    for key in ("train-s", "handler-s"):
        values = [float(next(iter(r.metric_records.values())).get(key, 0.0)) for r in records]  # type: ignore[arg-type]
        if values:
            metrics[f"{key}-max"] = max(values)
            metrics[f"{key}-sum"] = sum(values)
    return metrics


@dataclass
class RoundAudit:
    """What the guard saw in one round: for the round log."""

    accepted: list[int] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    abstained: list[int] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    train_phase_s: float | None = None
    """Seconds from sending the round's training messages to having all replies (server clock)."""


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
        self._sent: dict[int, float] = {}

    def summary(self) -> None:
        logger.info("guarded strategy: %d tensors validated per update", len(self.spec))
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent[server_round] = time.perf_counter()
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        audit = self.audits.setdefault(server_round, RoundAudit())
        if server_round in self._sent:
            audit.train_phase_s = time.perf_counter() - self._sent[server_round]
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


class ClientLevelDP(Strategy):
    """DP-FedAvg around Flower's ``DifferentialPrivacyClientSideFixedClipping``: Flower clips
    (client ``fixedclipping_mod``) and noises (σ·C/m on the mean); this wrapper keeps the
    guarantee honest. A round with fewer than m valid updates is *not released* (the noise is
    scaled for m; the mean of fewer would leak more), and each release is accounted at the
    sample rate the round really had (m / connected nodes), so ε is exact even when nodes
    are missing. Before a release would push ε past the target, rounds stop being released.
    """

    def __init__(self, strategy: DifferentialPrivacyClientSideFixedClipping, plan: ClientLevelPlan) -> None:
        self.strategy = strategy
        self.plan = plan
        self.history: list[tuple[float, float, int]] = []
        self.skipped: dict[int, str] = {}
        self._rate: dict[int, float] = {}

    def epsilon(self) -> float:
        """Opacus RDP ε of every round released so far."""
        return epsilon_of(self.history, self.plan.delta)

    def summary(self) -> None:
        logger.info(
            "client-level DP: σ=%.3g, C=%.3g, %d of %d clients per round, planned ε=%.3g (δ=%g) over %d rounds",
            self.plan.noise_multiplier,
            self.plan.clipping_norm,
            self.plan.clients_per_round,
            self.plan.population,
            self.plan.epsilon,
            self.plan.delta,
            self.plan.rounds,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        connected = max(len(list(grid.get_node_ids())), self.plan.clients_per_round)
        self._rate[server_round] = min(1.0, self.plan.clients_per_round / min(connected, self.plan.population))
        future = [*self.history, (self.plan.noise_multiplier, self._rate[server_round], 1)]
        if epsilon_of(future, self.plan.delta) > self.plan.epsilon * 1.0001 + 1e-9:
            self.skipped[server_round] = "privacy budget: one more release would exceed the planned ε"
            logger.warning("round %d: not sampled, %s", server_round, self.skipped[server_round])
            return []
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [r for r in replies if not r.has_error()]
        if len(valid) < self.plan.clients_per_round:
            self.skipped[server_round] = (
                f"{len(valid)} valid updates < clients-per-round {self.plan.clients_per_round}: not released"
            )
            logger.warning("round %d: %s", server_round, self.skipped[server_round])
            return None, None
        arrays, metrics = self.strategy.aggregate_train(server_round, valid[: self.plan.clients_per_round])
        if arrays is not None:
            self.history.append((self.plan.noise_multiplier, self._rate.get(server_round, self.plan.sample_rate), 1))
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def client_level_plan(config: FedConfig) -> ClientLevelPlan:
    """The run's DP-FedAvg mechanism, checked at start (raises ``ClientLevelDPError``)."""
    return plan_client_level(
        target_epsilon=config.target_epsilon,
        delta=config.target_delta,
        population=config.population,
        clients_per_round=config.clients_per_round,
        rounds=config.num_server_rounds,
        clipping_norm=config.central_clipping_norm,
        noise_multiplier=config.noise_multiplier,
    )


def build_strategy(config: FedConfig, spec: Spec) -> GuardedStrategy:
    """FedAvg (default), FedAvgM, FedProx or FedAdam from Flower, optionally inside Flower's server-side
    fixed-clipping central-DP wrapper, all behind the update guard."""
    client_level = config.dp == "client-level"
    plan = client_level_plan(config) if client_level else None  # refuses a bad setting first
    weight_key = UNIFORM_WEIGHT_KEY if config.dp in ("server", "client-level") else WEIGHT_KEY
    common = dict(
        # client-level DP samples exactly m clients per round: int(n · 1e-9) = 0 < min-train-nodes = m
        fraction_train=1e-9 if client_level else config.fraction_train,
        fraction_evaluate=1.0 if config.federated_evaluation else 0.0,
        min_train_nodes=config.clients_per_round if client_level else config.min_train_nodes,
        min_evaluate_nodes=config.min_train_nodes if config.federated_evaluation else 0,
        min_available_nodes=max(config.min_available_nodes, config.clients_per_round if client_level else 1),
        weighted_by_key=weight_key,
        train_metrics_aggr_fn=aggregate_train_metrics,
    )
    inner: Strategy
    if config.strategy == "fedavg":
        inner = FedAvg(**common)
    elif config.strategy == "fedprox":
        inner = FedProx(proximal_mu=config.proximal_mu, **common)
    elif config.strategy == "fedavgm":
        inner = FedAvgM(server_learning_rate=config.server_step, server_momentum=config.server_momentum, **common)
    elif config.strategy == "fedadam":
        inner = FedAdam(eta=config.server_step, **common)
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
    elif plan is not None:
        if config.strategy != "fedavg":
            raise ClientLevelDPError(
                f"client-level DP is DP-FedAvg: strategy must be 'fedavg', not {config.strategy!r}"
            )
        inner = ClientLevelDP(
            DifferentialPrivacyClientSideFixedClipping(
                inner,
                noise_multiplier=plan.noise_multiplier,
                clipping_norm=plan.clipping_norm,
                num_sampled_clients=plan.clients_per_round,
            ),
            plan,
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
