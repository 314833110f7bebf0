"""Client-level DP (DP-FedAvg): the mechanism is planned and refused at start, its ε is Opacus'
RDP accountant at sample rate m/N, Flower's client-side clipping mod clips every update, the
server adds noise of std σ·C/m, and a round with fewer than m valid updates is not released."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import node_message
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from opacus.accountants import RDPAccountant

from softcar.errors import SoftcarError
from softcar_federated.config import FedConfig
from softcar_federated.privacy import ClientLevelDPError, plan_client_level
from softcar_federated.strategy import ClientLevelDP, build_strategy
from softcar_federated.update_clipping import client_level_clipping_mod
from softcar_federated.validation import spec_of

DIM = 20_000


def _arr(values) -> Array:
    return Array(np.asarray(values, dtype=np.float32))


def _global() -> ArrayRecord:
    return ArrayRecord({"adapter.proj.weight": _arr(np.zeros(DIM))})


def _message(content: RecordDict, node: int = 1, kind: str = MessageType.TRAIN) -> Message:
    return node_message(
        content,
        kind,
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        ttl=60.0,
    )


def _reply(node: int, arrays: ArrayRecord) -> Message:
    metrics = MetricRecord({"num-examples": 10, "unit-weight": 1.0, "train-loss": 1.0, "train-s": 2.0 + node})
    return _message(RecordDict({"arrays": arrays, "metrics": metrics}), node)


def _config(**overrides) -> FedConfig:
    values = dict(
        dp="client-level",
        population=64,
        clients_per_round=16,
        num_server_rounds=5,
        target_epsilon=8.0,
        target_delta=1e-3,
        central_clipping_norm=0.1,
    )
    return FedConfig(**{**values, **overrides})


def test_plan_epsilon_is_opacus_rdp_at_sample_rate_m_over_n():
    plan = plan_client_level(
        target_epsilon=8.0, delta=1e-3, population=64, clients_per_round=16, rounds=5, clipping_norm=0.1
    )
    replay = RDPAccountant()
    for _ in range(5):  # an independent accountant, one release per round
        replay.step(noise_multiplier=plan.noise_multiplier, sample_rate=16 / 64)
    assert plan.epsilon == pytest.approx(replay.get_epsilon(1e-3), rel=1e-9)
    assert plan.epsilon <= 8.0 * 1.0001
    assert plan.sample_rate == 0.25 and plan.relative_noise == pytest.approx(plan.noise_multiplier / 16)
    # Sampling amplifies privacy: a larger federation needs less noise for the same ε.
    bigger = plan_client_level(
        target_epsilon=8.0, delta=1e-3, population=256, clients_per_round=16, rounds=5, clipping_norm=0.1
    )
    assert bigger.noise_multiplier < plan.noise_multiplier


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"clients_per_round": 80}, "clients-per-round 80 is not between 1 and population 64"),
        ({"target_delta": 0.05}, "1/population"),
        ({"noise_multiplier": 0.3}, "spends ε"),
        ({"target_epsilon": float("inf")}, "finite target-epsilon"),
        ({"strategy": "fedprox"}, "DP-FedAvg"),
    ],
)
def test_bad_client_level_setting_is_refused_at_start(overrides, words):
    with pytest.raises(ClientLevelDPError) as info:
        build_strategy(_config(**overrides), spec_of(_global()))
    assert words in str(info.value)
    assert isinstance(info.value, SoftcarError) and isinstance(info.value, ValueError)


def test_client_level_needs_population_and_clients_per_round():
    with pytest.raises(ValueError, match="population and clients-per-round"):
        FedConfig(dp="client-level")


def test_server_adds_noise_sigma_c_over_m_and_accounts_each_release():
    strategy = build_strategy(_config(), spec_of(_global()))
    dp = strategy.strategy
    assert isinstance(dp, ClientLevelDP)
    assert isinstance(dp.strategy, DifferentialPrivacyClientSideFixedClipping)
    assert strategy.weight_key == "unit-weight"  # equal weights: each client's influence is ≤ C/m
    # Updates already clipped by the clients' mod: norm exactly C along different directions.
    replies = []
    for node in range(16):
        update = np.zeros(DIM)
        update[node] = 0.1
        replies.append(_reply(node + 1, ArrayRecord({"adapter.proj.weight": _arr(update)})))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    noise = arrays["adapter.proj.weight"].numpy().astype(np.float64)
    noise[:16] -= 0.1 / 16  # the mean of the updates
    expected = dp.plan.noise_multiplier * 0.1 / 16
    assert noise.std() == pytest.approx(expected, rel=0.05)
    assert dp.history == [(dp.plan.noise_multiplier, 0.25, 1)]
    assert metrics["train-s-max"] == pytest.approx(18.0) and metrics["train-s-sum"] == pytest.approx(
        sum(2.0 + n for n in range(1, 17))
    )


def test_round_with_fewer_than_m_valid_updates_is_not_released(caplog):
    strategy = build_strategy(_config(), spec_of(_global()))
    dp = strategy.strategy
    assert isinstance(dp, ClientLevelDP)
    replies = [_reply(n, _global()) for n in range(1, 16)]  # 15 < 16
    bad = ArrayRecord({"adapter.proj.weight": _arr(np.full(DIM, np.nan))})
    replies.append(_reply(16, bad))  # the guard rejects it: 15 valid updates remain
    with caplog.at_level("WARNING"):
        assert strategy.aggregate_train(1, replies) == (None, None)
    assert "15 valid updates < clients-per-round 16" in dp.skipped[1]
    assert dp.history == [] and dp.epsilon() == 0.0


def test_clipping_mod_clips_the_update_on_train_messages_only():
    received = ArrayRecord({"adapter.proj.weight": _arr(np.ones(DIM))})
    config = ConfigRecord({KEY_CLIPPING_NORM: 0.5, "server-round": 1})
    msg = _message(RecordDict({"arrays": received, "config": config}))

    def train(message: Message, context) -> Message:
        trained = message.content["arrays"]["adapter.proj.weight"].numpy() + 3.0  # update norm 3·√DIM
        return Message(
            RecordDict({"arrays": ArrayRecord({"adapter.proj.weight": _arr(trained)}), "metrics": MetricRecord()}),
            reply_to=message,
        )

    out = client_level_clipping_mod(msg, None, train)  # type: ignore[arg-type]
    update = out.content["arrays"]["adapter.proj.weight"].numpy() - 1.0
    assert np.linalg.norm(update) == pytest.approx(0.5, rel=1e-4)

    # Without the server's clipping norm (any other dp mode) the mod passes the reply through.
    plain = _message(RecordDict({"arrays": received, "config": ConfigRecord({"server-round": 1})}))
    out = client_level_clipping_mod(plain, None, train)  # type: ignore[arg-type]
    assert np.allclose(out.content["arrays"]["adapter.proj.weight"].numpy(), 4.0)
