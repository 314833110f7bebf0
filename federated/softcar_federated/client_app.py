"""The Flower ClientApp: local DP-SGD fine-tuning of a deployment's softcar retriever.

Per training message: take the deployment's retriever (kept loaded in this process across
rounds, else its federated copy if it has trained before), load the global tensors, train
adapter + head with the core trainer (under Opacus DP-SGD) on local examples, and reply with only
the shared tensors plus metrics, including the *cumulative* (ε, δ).

With ``secure-aggregation`` the same handler answers SecAgg+'s training message (legacy
``fitins`` records), and Flower's ``secaggplus_mod`` masks the reply; the protocol's other stages
never reach the handler.

Why the imports are inside the handlers: in deployment mode Flower 1.41 starts a fresh ClientApp
process for every message; loading this module must not import torch/transformers for messages
that do not train (three of SecAgg+'s four stages). With node config ``worker=<socket>`` the
training and evaluation messages do not import them either: a long-lived worker beside the
SuperNode runs these same handlers with the retriever already loaded (``node_worker``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from softcar_federated import node_worker, secure_aggregation
from softcar_federated.message_audit import audit_log_mod
from softcar_federated.update_clipping import client_level_clipping_mod

if TYPE_CHECKING:
    import torch

    from softcar_federated.config import FedConfig, NodeConfig
    from softcar_federated.deployment import LocalDeployment
    from softcar_federated.privacy import PrivacyLedger

logger = logging.getLogger(__name__)

LEDGER_STATE_KEY = "softcar-privacy-ledger"
NOISE_PLAN_STATE_KEY = "softcar-noise-plan"

# Mods wrap outside-in; a reply passes them inside-out: client-level DP clips the update first,
# SecAgg+ masks it, and the audit log (outermost) records what actually leaves the node.
app = ClientApp(mods=[audit_log_mod, secure_aggregation.secure_aggregation_mod, client_level_clipping_mod])


def _round_timeout(context: Context) -> float | None:
    """How long a delegated handler may take: the run's round timeout (the server stops waiting then)."""
    seconds = float(context.run_config.get("round-timeout", 0.0) or 0.0)  # type: ignore[arg-type]
    return seconds if seconds > 0 else None


def _load_global(deployment: LocalDeployment, arrays: ArrayRecord, config: ConfigRecord) -> None:
    """Put the global tensors into the local retriever, with a clear error if they do not fit."""
    from softcar.errors import CheckpointError
    from softcar_federated import partitions

    expected = config.get("doc-ids-sha256")
    if expected and "head.weight" in arrays.keys():
        mine = partitions.doc_ids_digest(deployment.retriever.documents)
        if mine != expected:
            raise CheckpointError(
                "mode 'adapter+head' needs every deployment to share one document-id space, but this "
                "node's documents differ from the server's (use mode 'adapter' for private corpora)"
            )
    state = {key: tensor.float() for key, tensor in arrays.to_torch_state_dict().items()}
    deployment.retriever.load_trainable_state_dict(state, strict=True)


def _ledger(context: Context, deployment: LocalDeployment) -> PrivacyLedger:
    """The cumulative ledger: from the ClientApp's persistent state, or from disk after a restart."""
    from softcar_federated.privacy import PrivacyLedger

    disk = PrivacyLedger.load(deployment.ledger_path)
    if LEDGER_STATE_KEY in context.state.config_records:
        state = PrivacyLedger.from_flat(dict(context.state.config_records[LEDGER_STATE_KEY]))
        return state.merged(disk)
    return disk


def _planned_noise(
    context: Context, target_epsilon: float, delta: float, batches: int, epochs: int, rounds: int
) -> tuple[float | None, float, int]:
    """Opacus' noise calibration (a binary search over RDP: seconds per call), computed once per
    node and kept in ``context.state``, which the SuperNode keeps across rounds and processes."""
    from softcar_federated.privacy import planned_noise

    key = f"{target_epsilon!r}|{delta!r}|{batches}|{epochs}|{rounds}"
    memo = context.state.config_records.get(NOISE_PLAN_STATE_KEY)
    if memo is not None and memo.get("key") == key:
        return float(memo["sigma"]), float(memo["rate"]), int(memo["steps"])  # type: ignore[arg-type]
    sigma, rate, steps = planned_noise(target_epsilon, delta, batches, epochs, rounds)
    if sigma is not None:
        context.state.config_records[NOISE_PLAN_STATE_KEY] = ConfigRecord(
            {"key": key, "sigma": sigma, "rate": rate, "steps": steps}
        )
    return sigma, rate, steps


def _store_ledger(context: Context, deployment: LocalDeployment, ledger: PrivacyLedger) -> None:
    ledger.save(deployment.ledger_path)
    context.state.config_records[LEDGER_STATE_KEY] = ConfigRecord(ledger.to_flat())  # type: ignore[arg-type]


def _poison(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    """Fault injection for tests and drills (node config ``poison``): never used otherwise."""
    import torch

    state = dict(state)
    key = sorted(state)[0]
    if how == "nan":
        state[key] = torch.full_like(state[key], float("nan"))
    elif how == "shape":
        state[key] = torch.zeros(*[d + 1 for d in state[key].shape])
    elif how == "keys":
        state["adapter.backdoor"] = state.pop(key)
    else:
        raise ValueError(f"unknown poison {how!r}")
    return state


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local DP-SGD; replies with shared tensors and cumulative (ε, δ)."""
    worker = node_worker.worker_socket(context)
    if worker is not None:  # the node's long-lived worker has everything loaded already
        return node_worker.delegate("train", msg, context, worker, _round_timeout(context))
    from softcar_federated.config import FedConfig, NodeConfig
    from softcar_federated.deployment import forget_deployment

    started = time.perf_counter()
    config = FedConfig.from_run_config(context.run_config)
    node = NodeConfig.from_node_config(context.node_config)
    try:
        return _train(msg, context, config, node, started)
    except BaseException:
        forget_deployment(config, node, context.run_id)  # its in-memory model may be half-trained
        raise


def _train(msg: Message, context: Context, config: FedConfig, node: NodeConfig, started: float) -> Message:
    from softcar_federated.deployment import open_deployment
    from softcar_federated.local_training import DPParams, train_round
    from softcar_federated.privacy import would_exceed
    from softcar_federated.validation import spec_of, validate_arrays

    legacy = secure_aggregation.is_legacy(msg)  # SecAgg+'s training stage
    deployment = open_deployment(config, node, context.run_id)
    if legacy:
        ndarrays, round_config = secure_aggregation.legacy_inputs(msg)
        keys = list(deployment.retriever.trainable_state_dict(parts=config.shared_parts))
        arrays = secure_aggregation.keyed(ndarrays, keys)
    else:
        arrays, round_config = msg.content.array_records["arrays"], msg.content.config_records["config"]
    server_round = int(round_config.get("server-round", 0))  # type: ignore[arg-type]
    if node.crash_at_round is not None and server_round == node.crash_at_round:
        raise RuntimeError(f"injected crash at round {server_round} (node config crash-at-round)")
    _load_global(deployment, arrays, round_config)
    examples = deployment.examples()
    ledger = _ledger(context, deployment)
    delta = config.target_delta
    metrics: dict[str, float | int] = {"num-examples": len(examples), "unit-weight": 1.0, "delta": delta}

    train_config = config.train_config(seed=config.seed + server_round)
    dp: DPParams | None = None
    if config.client_dp_enabled:
        batches = math.ceil(len(examples) / train_config.batch_size)  # the training loader's length
        planned_sigma, rate, steps = _planned_noise(
            context, config.target_epsilon, delta, batches, config.local_epochs, config.num_server_rounds
        )
        sigma = config.noise_multiplier or planned_sigma
        assert sigma is not None
        if would_exceed(ledger, sigma, rate, steps, delta, config.target_epsilon):
            logger.info("privacy budget ε=%.3g spent: abstaining from round %d", config.target_epsilon, server_round)
            metrics.update(
                {
                    "abstained": 1,
                    "epsilon": ledger.epsilon(delta),
                    "train-loss": 0.0,
                    "noise-multiplier": sigma,
                    "steps": 0,
                }
            )
            if legacy:  # weight 0: the masked sum is unchanged by this node
                return secure_aggregation.fit_reply(msg, ndarrays, 0, metrics)
            reply = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord(metrics)})
            return Message(reply, reply_to=msg)
        dp = DPParams(noise_multiplier=sigma, max_grad_norm=config.max_grad_norm)

    proximal_mu = float(round_config.get("proximal-mu", 0.0))  # type: ignore[arg-type]
    # The global tensors this round starts from: FedProx pulls local training toward them.
    reference = deployment.retriever.trainable_state_dict() if proximal_mu > 0 else None
    training_started = time.perf_counter()
    result, ledger = train_round(
        deployment.retriever,
        examples,
        train_config,
        epochs=config.local_epochs,
        dp=dp,
        ledger=ledger,
        proximal=reference,
        proximal_mu=proximal_mu,
    )
    train_seconds = time.perf_counter() - training_started
    _store_ledger(context, deployment, ledger)
    deployment.save_copy()
    epsilon = ledger.epsilon(delta) if dp is not None else math.inf
    metrics.update(
        {
            "abstained": 0,
            "train-loss": result.loss,
            "epsilon": epsilon,
            "noise-multiplier": dp.noise_multiplier if dp is not None else 0.0,
            "steps": result.steps,
            "train-s": train_seconds,  # local training compute, for simulated parallel time
            # everything in this handler, training included (not the process start or transfer)
            "handler-s": time.perf_counter() - started,
        }
    )
    shared = deployment.retriever.trainable_state_dict(parts=config.shared_parts)
    if node.poison:
        shared = _poison(shared, node.poison)
    logger.info(
        "round %d: trained on %d examples, loss %.4f, ε=%.3f", server_round, len(examples), result.loss, epsilon
    )
    if legacy:
        # The server cannot inspect a masked update: this node runs the update guard on itself.
        update = ArrayRecord(torch_state_dict=shared)
        validate_arrays(update, spec_of(arrays))
        values = {key: update[key].numpy() for key in update}
        secure_aggregation.check_encodable(
            values, len(examples), config.secagg_clipping_range, config.secagg_max_weight
        )
        return secure_aggregation.fit_reply(msg, list(values.values()), len(examples), metrics)
    reply = RecordDict({"arrays": ArrayRecord(torch_state_dict=shared), "metrics": MetricRecord(metrics)})
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Quality of the global tensors combined with this deployment's own head, on its held-out queries."""
    worker = node_worker.worker_socket(context)
    if worker is not None:
        return node_worker.delegate("evaluate", msg, context, worker, _round_timeout(context))
    from softcar_federated import partitions
    from softcar_federated.config import FedConfig, NodeConfig
    from softcar_federated.deployment import open_deployment

    config = FedConfig.from_run_config(context.run_config)
    node = NodeConfig.from_node_config(context.node_config)
    deployment = open_deployment(config, node, context.run_id)
    _load_global(deployment, msg.content.array_records["arrays"], msg.content.config_records["config"])
    scores = partitions.quality(deployment.retriever, deployment.heldout)
    metrics: dict[str, float | int] = {k: float(v) for k, v in scores.items()}
    metrics["num-examples"] = len(deployment.heldout)
    metrics["unit-weight"] = 1.0
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
