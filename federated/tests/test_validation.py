"""Malformed updates (NaN/Inf, wrong shapes, wrong keys) are rejected, logged, never aggregated."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import node_message
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from softcar_federated.config import FedConfig
from softcar_federated.strategy import build_strategy
from softcar_federated.validation import MalformedUpdateError, spec_of, validate_arrays


def _global() -> ArrayRecord:
    return ArrayRecord({"adapter.proj.weight": _arr(np.zeros((4, 4))), "adapter.proj.bias": _arr(np.zeros(4))})


def _arr(values):
    return Array(np.asarray(values, dtype=np.float32))


def _reply(node: int, arrays: ArrayRecord, n: int = 10, **extra) -> Message:
    metrics = MetricRecord({"num-examples": n, "unit-weight": 1.0, "train-loss": 1.0, "epsilon": 1.0, **extra})
    return node_message(
        RecordDict({"arrays": arrays, "metrics": metrics}),
        MessageType.TRAIN,
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        ttl=60.0,
    )


def test_spec_and_validate_ok():
    spec = spec_of(_global())
    assert spec == {"adapter.proj.weight": (4, 4), "adapter.proj.bias": (4,)}
    validate_arrays(_global(), spec)


@pytest.mark.parametrize(
    "arrays, key",
    [
        ({"adapter.proj.weight": np.full((4, 4), np.nan), "adapter.proj.bias": np.zeros(4)}, "adapter.proj.weight"),
        (
            {"adapter.proj.weight": np.zeros((4, 4)), "adapter.proj.bias": np.array([0, np.inf, 0, 0])},
            "adapter.proj.bias",
        ),
        ({"adapter.proj.weight": np.zeros((5, 4)), "adapter.proj.bias": np.zeros(4)}, "adapter.proj.weight"),
        ({"adapter.proj.weight": np.zeros((4, 4)), "adapter.backdoor": np.zeros(4)}, "adapter.backdoor"),
        ({"adapter.proj.weight": np.zeros((4, 4))}, "adapter.proj.bias"),
    ],
)
def test_malformed_update_names_the_key(arrays, key):
    record = ArrayRecord({k: _arr(v) for k, v in arrays.items()})
    with pytest.raises(MalformedUpdateError) as info:
        validate_arrays(record, spec_of(_global()))
    assert info.value.key == key
    assert key in str(info.value)
    assert isinstance(info.value, ValueError)


def test_guard_drops_poisoned_and_aggregates_the_rest(caplog):
    strategy = build_strategy(FedConfig(dp="none"), spec_of(_global()))
    good = ArrayRecord({"adapter.proj.weight": _arr(np.ones((4, 4))), "adapter.proj.bias": _arr(np.ones(4))})
    nan = ArrayRecord({"adapter.proj.weight": _arr(np.full((4, 4), np.nan)), "adapter.proj.bias": _arr(np.ones(4))})
    shape = ArrayRecord({"adapter.proj.weight": _arr(np.ones((5, 4))), "adapter.proj.bias": _arr(np.ones(4))})
    keys = ArrayRecord({"adapter.proj.weight": _arr(np.ones((4, 4))), "adapter.x": _arr(np.ones(4))})
    abstain = ArrayRecord({"adapter.proj.weight": _arr(np.zeros((4, 4))), "adapter.proj.bias": _arr(np.zeros(4))})
    replies = [_reply(1, good), _reply(2, nan), _reply(3, shape), _reply(4, keys), _reply(5, abstain, abstained=1)]
    with caplog.at_level("WARNING"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["adapter.proj.weight"].numpy(), np.ones((4, 4)))
    audit = strategy.audits[1]
    assert len(audit.accepted) == 1 and len(audit.rejected) == 3 and len(audit.abstained) == 1
    assert {r["key"] for r in audit.rejected} == {"adapter.proj.weight", "adapter.x"}
    assert "rejected update" in caplog.text
    assert metrics is not None and metrics["clients"] == 1


def test_guard_with_only_bad_updates_keeps_global():
    strategy = build_strategy(FedConfig(dp="none"), spec_of(_global()))
    nan = ArrayRecord({"adapter.proj.weight": _arr(np.full((4, 4), np.nan)), "adapter.proj.bias": _arr(np.ones(4))})
    assert strategy.aggregate_train(1, [_reply(1, nan)]) == (None, None)


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedprox", "fedadam"])
def test_strategies_and_central_dp_build(name):
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    plain = build_strategy(FedConfig(strategy=name, dp="client"), spec_of(_global()))
    assert type(plain.strategy).__name__.lower() == name
    central = build_strategy(FedConfig(strategy=name, dp="server"), spec_of(_global()))
    assert isinstance(central.strategy, DifferentialPrivacyServerSideFixedClipping)
    assert central.weight_key == "unit-weight"


def test_fedavgm_server_learning_rate_scales_the_mean_update():
    """Non-IID clients with a shared head each train their own rows; the mean divides each
    row's update by the number of clients, and FedAvgM's server step of that size undoes it."""
    start = _global()
    mine = ArrayRecord({k: _arr(start[k].numpy() + (1.0 if i == 0 else 0.0)) for i, k in enumerate(start.keys())})
    other = ArrayRecord({k: _arr(start[k].numpy() + (0.0 if i == 0 else 1.0)) for i, k in enumerate(start.keys())})
    results = {}
    for name, rate in (("fedavg", 0.0), ("fedavgm", 2.0)):
        strategy = build_strategy(FedConfig(strategy=name, dp="none", server_learning_rate=rate), spec_of(start))
        strategy.strategy.current_arrays = start  # what configure_train records before a round
        arrays, _ = strategy.aggregate_train(1, [_reply(1, mine), _reply(2, other)])
        results[name] = {k: arrays[k].numpy() - start[k].numpy() for k in start.keys()}
    for key in start.keys():
        np.testing.assert_allclose(results["fedavg"][key], 0.5, rtol=1e-6)  # equal weights: half each
        np.testing.assert_allclose(results["fedavgm"][key], 1.0, rtol=1e-6)  # each client's own step, whole


def test_central_dp_clips_each_update_to_the_norm():
    """Flower's server-side fixed clipping: with zero noise the aggregate moves at most C."""
    config = FedConfig(
        dp="server", central_noise_multiplier=0.0, central_clipping_norm=0.5, central_num_sampled_clients=2
    )
    strategy = build_strategy(config, spec_of(_global()))
    strategy.strategy.current_arrays = _global()  # what configure_train records before a round
    big = ArrayRecord({"adapter.proj.weight": _arr(np.full((4, 4), 10.0)), "adapter.proj.bias": _arr(np.full(4, 10.0))})
    arrays, _ = strategy.aggregate_train(1, [_reply(1, big), _reply(2, big)])
    delta = np.concatenate([arrays[k].numpy().ravel() for k in arrays.keys()])
    assert np.linalg.norm(delta) == pytest.approx(0.5, rel=1e-4)
