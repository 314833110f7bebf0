"""Secure aggregation with Flower's SecAgg+: the server learns only the (weighted) sum of updates.

Flower 1.41 ships SecAgg+ for its compatibility layer only: the server side is
``flwr.server.workflow.SecAggPlusWorkflow`` inside a ``DefaultWorkflow`` (a ``LegacyContext`` and
a ``flwr.server.strategy`` strategy), the client side is the ``secaggplus_mod`` mod, and training
messages carry the legacy ``fitins.*`` / ``fitres.*`` records instead of ``arrays`` / ``config``.
This module is the glue on both ends, and nothing else: the protocol, its key agreement,
Shamir sharing, masking, quantisation and dropout recovery are all Flower's.

It imports only Flower (no torch): every SecAgg+ stage is a separate message, and in deployment
mode Flower starts a fresh ClientApp process per message, so the three key-exchange stages must
not pay for importing torch/transformers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

if TYPE_CHECKING:  # heavy: only for annotations
    from softcar_federated.config import FedConfig

logger = logging.getLogger(__name__)

FIT_INS = "fitins"


class SecureAggregationConfigError(ValueError):
    """A SecAgg+ setting that cannot work (too few nodes for the threshold, a threshold that
    lets the server unmask one node, an option that needs individual updates). Raised at start.

    Also a :class:`softcar.errors.SoftcarError` (see :func:`config_error`); defined here without
    importing softcar, so the light ClientApp path stays free of torch.
    """


class SecureAggregationError(RuntimeError):
    """A node's update cannot be encoded for SecAgg+ (weight or values outside the agreed ranges)."""


@functools.cache
def _softcar_error(cls: type[Exception]) -> type[Exception]:
    """``cls`` re-based on ``softcar.errors.SoftcarError`` as well (imported lazily, one class per base)."""
    from softcar.errors import SoftcarError

    return type(cls.__name__, (SoftcarError, cls), {"__doc__": cls.__doc__, "__module__": cls.__module__})


# ---------------------------------------------------------------- start-up checks
def planned_num_shares(config: FedConfig) -> int:
    """Shares per node as planned at start: ``secagg-num-shares``, or every node of a round (at
    least ``min-train-nodes``)."""
    return config.secagg_num_shares or config.min_train_nodes


def check_config(config: FedConfig) -> None:
    """Refuse SecAgg+ settings that cannot work, before any node is contacted.

    Raises:
        SecureAggregationConfigError: naming the setting and the numbers that conflict.
    """
    if not config.secure_aggregation:
        return
    threshold = config.secagg_reconstruction_threshold
    shares = planned_num_shares(config)
    problems: list[str] = []
    if config.dp == "server":
        problems.append(
            "dp='server' clips and noises each node's update on the server, but under SecAgg+ the server "
            "only sees their sum: use dp='client' (Opacus DP-SGD on the nodes) or dp='none'"
        )
    if config.dp == "client-level":
        problems.append(
            "dp='client-level' adds its noise in the Message-API DP-FedAvg strategy, but SecAgg+ runs "
            "Flower's legacy workflow, which would release the clipped sum without that noise: "
            "use dp='client' (Opacus DP-SGD on the nodes) with SecAgg+"
        )
    if config.min_train_nodes < 2:
        problems.append(
            f"min-train-nodes={config.min_train_nodes}: the sum of one node's update is that update; "
            "SecAgg+ needs at least 2 nodes per round (3 to survive a dropout)"
        )
    if threshold < 2:
        problems.append(f"secagg-reconstruction-threshold={threshold}: must be at least 2")
    if config.secagg_num_shares and config.secagg_num_shares < 3:
        problems.append(f"secagg-num-shares={config.secagg_num_shares}: must be 0 (all nodes) or at least 3")
    if config.secagg_num_shares and threshold >= config.secagg_num_shares:
        problems.append(
            f"secagg-reconstruction-threshold={threshold} must be below secagg-num-shares="
            f"{config.secagg_num_shares}, else no node may drop out"
        )
    if threshold > config.min_train_nodes:
        problems.append(
            f"secagg-reconstruction-threshold={threshold} exceeds min-train-nodes={config.min_train_nodes}: "
            f"a round with {config.min_train_nodes} nodes can never unmask its sum"
        )
    if threshold >= 2 and 2 * threshold <= shares:
        problems.append(
            f"secagg-reconstruction-threshold={threshold} is not a majority of the {shares} shares: a server "
            "could collect one share set for a node's self-mask and a disjoint one for its pairwise masks, "
            "and unmask that node's update (use more than half)"
        )
    if config.secagg_max_weight < 1:
        problems.append(f"secagg-max-weight={config.secagg_max_weight}: must be at least 1 (a node's num-examples)")
    if problems:
        raise config_error("SecAgg+ cannot run with this configuration: " + "; ".join(problems))


def config_error(message: str) -> Exception:
    """A :class:`SecureAggregationConfigError` that is also a ``SoftcarError``."""
    return _softcar_error(SecureAggregationConfigError)(message)


# ---------------------------------------------------------------- client side
def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ runs; a pass-through for every other message.

    The server's SecAgg+ workflow marks each of its training messages with a
    ``secaggplus_configs`` record; plain FedAvg runs do not, and go straight to the app.
    """
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_legacy(msg: Message) -> bool:
    """True for the compatibility layer's ``fitins`` training messages (SecAgg+ runs)."""
    return f"{FIT_INS}.parameters" in msg.content.array_records


def legacy_inputs(msg: Message) -> tuple[list[np.ndarray], ConfigRecord]:
    """The global tensors (in the server's key order) and the round config of a ``fitins`` message."""
    ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    return parameters_to_ndarrays(ins.parameters), ConfigRecord(dict(ins.config))


def keyed(arrays: Sequence[np.ndarray], keys: Sequence[str]) -> ArrayRecord:
    """Name the positional tensors of a legacy message with this node's key order (the server
    builds them from the same ``trainable_state_dict`` order); a mismatch is a clear error."""
    if len(arrays) != len(keys):
        raise _softcar_error(SecureAggregationError)(
            f"the server sent {len(arrays)} tensors, this node shares {len(keys)}: {keys}"
        )
    return named(keys, arrays)


def named(keys: Sequence[str], arrays: Sequence[np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of positional tensors under ``keys`` (same order)."""
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in zip(keys, arrays, strict=True)})


def check_encodable(arrays: Mapping[str, np.ndarray], weight: int, clipping_range: float, max_weight: float) -> None:
    """SecAgg+ quantises ``weight / max_weight × value`` in ``[-clipping_range, clipping_range]``:
    refuse (instead of silently clipping or overflowing) what it cannot encode."""
    if weight > max_weight:
        raise _softcar_error(SecureAggregationError)(
            f"num-examples {weight} exceeds secagg-max-weight {max_weight:g}: the masked sum would overflow"
        )
    for key, value in arrays.items():
        peak = float(np.max(np.abs(value))) if value.size else 0.0
        if not np.isfinite(peak) or peak > clipping_range:
            raise _softcar_error(SecureAggregationError)(
                f"'{key}' has |value| up to {peak:g}, outside secagg-clipping-range {clipping_range:g}"
            )


def fit_reply(msg: Message, arrays: Sequence[np.ndarray], weight: int, metrics: Mapping[str, float | int]) -> Message:
    """A legacy ``fitres`` reply: ``secaggplus_mod`` masks its tensors and drops the plain copy;
    the metrics (ε, loss, num-examples, …) travel in clear, as the server needs them."""
    fitres = FitRes(
        status=Status(Code.OK, ""),
        parameters=ndarrays_to_parameters(list(arrays)),
        num_examples=int(weight),
        metrics=dict(metrics),
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# ---------------------------------------------------------------- server side
@dataclass
class SecAggRound:
    """What the server saw in one SecAgg+ round: who contributed to the sum, who failed."""

    accepted: list[int] = field(default_factory=list)
    abstained: list[int] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def run_secure_aggregation(
    grid: Any,
    context: Context,
    config: FedConfig,
    initial: ArrayRecord,
    round_config: Mapping[str, Any],
    evaluate: Callable[[int, ArrayRecord, SecAggRound | None], dict[str, float] | None],
    check_aggregate: Callable[[ArrayRecord], None],
) -> dict[int, SecAggRound]:
    """Run ``num-server-rounds`` of Flower's ``DefaultWorkflow`` with ``SecAggPlusWorkflow`` as its
    fit stage and a Flower FedAvg / FedAvgM / FedProx / FedAdam strategy, then return the per-round audits.

    ``evaluate(round, arrays, audit)`` is called after each round (and for round 0) with the
    global tensors; ``check_aggregate`` validates each unmasked aggregate (keys, shapes,
    finiteness) and raises ``ValueError`` to reject it (the global model then stays unchanged).
    """
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext
    from flwr.server.strategy import FedAdam, FedAvg, FedAvgM, FedProx
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    keys = list(initial.keys())
    initial_ndarrays = [initial[k].numpy() for k in keys]
    audits: dict[int, SecAggRound] = {}

    def on_fit_config(server_round: int) -> dict[str, Any]:
        return {**dict(round_config), "server-round": server_round}

    def evaluate_fn(server_round: int, ndarrays: list[np.ndarray], _: dict) -> tuple[float, dict] | None:
        arrays = named(keys, ndarrays)
        scores = evaluate(server_round, arrays, audits.get(server_round))
        if not scores:
            return None
        return 1.0 - float(scores.get("R@1", 0.0)), dict(scores)

    def fit_metrics(results: list[tuple[int, dict]]) -> dict[str, Any]:
        epsilons = [float(m["epsilon"]) for _, m in results if "epsilon" in m]
        losses = [(n, float(m.get("train-loss", 0.0))) for n, m in results]
        total = sum(n for n, _ in losses)
        out: dict[str, Any] = {"clients": len(results)}
        if total > 0:
            out["train-loss"] = sum(n * v for n, v in losses) / total
        if epsilons:
            out["epsilon"], out["epsilon-min"] = max(epsilons), min(epsilons)
        return out

    common: dict[str, Any] = dict(
        fraction_fit=config.fraction_train,
        fraction_evaluate=0.0,  # server-side evaluation only (see federated/README.md)
        min_fit_clients=config.min_train_nodes,
        min_evaluate_clients=0,
        min_available_clients=config.min_available_nodes,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=on_fit_config,
        initial_parameters=ndarrays_to_parameters(initial_ndarrays),
        fit_metrics_aggregation_fn=fit_metrics,
    )
    if config.strategy == "fedprox":
        strategy: Any = FedProx(proximal_mu=config.proximal_mu, **common)
    elif config.strategy == "fedavgm":
        strategy = FedAvgM(server_learning_rate=config.server_step, server_momentum=config.server_momentum, **common)
    elif config.strategy == "fedadam":
        strategy = FedAdam(eta=config.server_step, **common)
    else:
        strategy = FedAvg(**common)

    original = strategy.aggregate_fit

    def aggregate_fit(server_round: int, results: list, failures: list) -> tuple:
        # Every result carries the same unmasked sum (SecAgg+ puts it in each FitRes): the
        # strategy's weighted mean of identical tensors is that sum divided by the total weight.
        audit = audits.setdefault(server_round, SecAggRound())
        kept = []
        for proxy, fitres in results:
            if int(fitres.metrics.get("abstained", 0)):
                audit.abstained.append(int(proxy.node_id))
            else:
                audit.accepted.append(int(proxy.node_id))
                kept.append((proxy, fitres))
        # SecAgg+ records a node failing in its masked-vector stage twice (same Error object).
        unique = {id(f.args[0] if isinstance(f, Exception) and f.args else f): f for f in failures}
        audit.failed = [{"reason": str(f)} for f in unique.values()]
        if not kept:
            logger.warning("round %d: no node contributed to the secure sum; global model unchanged", server_round)
            return None, {}
        parameters, metrics = original(server_round, kept, failures)
        try:  # the one thing the server can validate: the unmasked aggregate itself
            check_aggregate(named(keys, parameters_to_ndarrays(parameters)))
        except ValueError as exc:
            logger.warning("round %d: rejected the secure aggregate: %s", server_round, exc)
            audit.rejected.append({"key": getattr(exc, "key", None), "reason": str(exc)})
            return None, {}
        audit.metrics = {k: float(v) for k, v in fit_metrics([(r.num_examples, r.metrics) for _, r in results]).items()}
        return parameters, metrics

    strategy.aggregate_fit = aggregate_fit
    shares: int | float = config.secagg_num_shares or 1.0  # 1.0: every sampled node
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=shares,
            reconstruction_threshold=config.secagg_reconstruction_threshold,
            max_weight=config.secagg_max_weight,
            clipping_range=config.secagg_clipping_range,
            timeout=config.round_timeout,
        )
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config.num_server_rounds, round_timeout=config.round_timeout),
        strategy=strategy,
    )
    workflow(grid, legacy)
    return audits
