"""Checks on every client update before it can reach aggregation.

A single NaN, a tensor of the wrong shape or an unexpected key would silently corrupt (or crash)
the weighted average for everyone, so each reply is validated against the global model's spec
and rejected with a typed error that names the offending key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from softcar.errors import SoftcarError

Spec = dict[str, tuple[int, ...]]


class MalformedUpdateError(SoftcarError, ValueError):
    """A client update has NaN/Inf values, wrong shapes, wrong keys or bad metrics."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {reason}" if key else reason)


def spec_of(arrays: ArrayRecord) -> Spec:
    """Key → shape of the global model: what every update must match."""
    return {key: tuple(int(d) for d in array.shape) for key, array in arrays.items()}


def validate_arrays(arrays: ArrayRecord, spec: Spec) -> None:
    """Raise :class:`MalformedUpdateError` unless ``arrays`` matches ``spec`` and is finite."""
    keys = list(arrays.keys())
    unexpected = sorted(set(keys) - set(spec))
    if unexpected:
        raise MalformedUpdateError("unexpected key in update", unexpected[0])
    missing = sorted(set(spec) - set(keys))
    if missing:
        raise MalformedUpdateError("key missing from update", missing[0])
    for key in keys:
        array = arrays[key]
        shape = tuple(int(d) for d in array.shape)
        if shape != spec[key]:
            raise MalformedUpdateError(f"shape {shape} does not match the global {spec[key]}", key)
        values = array.numpy()
        if not np.issubdtype(values.dtype, np.floating):
            raise MalformedUpdateError(f"dtype {values.dtype} is not floating point", key)
        if not np.isfinite(values).all():
            raise MalformedUpdateError("contains NaN or Inf", key)


def validate_metrics(metrics: MetricRecord, weight_key: str) -> None:
    """The aggregation weight must be a positive finite number; other metrics finite."""
    if weight_key not in metrics:
        raise MalformedUpdateError("metric missing from reply", weight_key)
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v) and not key.startswith("epsilon"):
                raise MalformedUpdateError("metric is NaN or Inf", key)
    weight = metrics[weight_key]
    if isinstance(weight, list) or not (weight > 0):  # type: ignore[operator]
        raise MalformedUpdateError("aggregation weight must be a positive number", weight_key)


def validate_reply(message: Message, spec: Spec, weight_key: str, arrays_key: str = "arrays") -> None:
    """Validate one training reply: exactly one ArrayRecord and one MetricRecord, well-formed."""
    content = message.content
    if len(content.array_records) != 1 or arrays_key not in content.array_records:
        raise MalformedUpdateError(f"expected exactly one ArrayRecord named {arrays_key!r}")
    if len(content.metric_records) != 1:
        raise MalformedUpdateError("expected exactly one MetricRecord")
    validate_arrays(content.array_records[arrays_key], spec)
    validate_metrics(next(iter(content.metric_records.values())), weight_key)


def is_abstention(message: Message) -> bool:
    """A client whose privacy budget is spent replies but asks not to be aggregated."""
    records: Mapping[str, MetricRecord] = message.content.metric_records
    for metrics in records.values():
        if metrics.get("abstained", 0) == 1:
            return True
    return False
