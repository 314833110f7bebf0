"""Measurements: peak memory of a block, training-loop timing (trainer callbacks), latency."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from softcar import StepTimer, Trainer, TrainerCallback, query_latency


# --------------------------------------------------------------------------- memory
def _proc_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in KiB (Linux; empty elsewhere)."""
    out = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class PeakMemory:
    """Peak resident memory of a code block above the RSS at its start, in MiB.

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) at the start, so
    the figure is ``max RSS during the block - RSS at its start``. Where that reset is not
    allowed it falls back to ``ru_maxrss`` (then the peak may include the model load).
    """

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.method = "VmHWM after clear_refs reset - VmRSS at start"
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self.method = "ru_maxrss (not reset) - VmRSS at start"
        self.start_kib = _proc_status().get("VmRSS", 0)
        self.peak_kib = 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method.startswith("VmHWM"):
            self.peak_kib = _proc_status().get("VmHWM", 0)
        else:
            self.peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def result(self) -> dict[str, Any]:
        return {
            "rss_before_mib": round(self.start_kib / 1024, 1),
            "peak_rss_mib": round(self.peak_kib / 1024, 1),
            "peak_delta_mib": round((self.peak_kib - self.start_kib) / 1024, 1),
            "measured": self.method,
        }


# --------------------------------------------------------------------------- training time
class LoopClock(TrainerCallback):
    """Wall time of a whole ``Trainer.train`` call (steps + batching) and its epoch losses."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.epoch_losses: list[float] = []
        self._started: float | None = None

    def on_train_begin(self, trainer: Trainer, total_steps: int) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, epoch: int, mean_loss: float) -> None:
        self.epoch_losses.append(mean_loss)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None


def training_callbacks() -> tuple[LoopClock, StepTimer]:
    return LoopClock(), StepTimer()


def training_figures(clock: LoopClock, steps: StepTimer) -> dict[str, Any]:
    """What the tables report about one training run.

    ``train_loop_s``: from the trainer's first to its last callback (forward, backward, update
    and batch assembly; not the one-off tokenisation or document encoding before it).
    ``step_s``: the sum of ``StepTimer``'s per-step times (forward + backward + update only).
    ``examples``: examples seen over all epochs.
    """
    seen = steps.examples
    return {
        "train_loop_s": clock.seconds,
        "step_s": sum(steps.seconds),
        "steps": len(steps.seconds),
        "examples": seen // max(len(clock.epoch_losses), 1),
        "epochs": len(clock.epoch_losses),
        "ms_per_example": 1000 * clock.seconds / seen if seen else None,
        "step_ms_per_example": 1000 * sum(steps.seconds) / seen if seen else None,
        "epoch_losses": clock.epoch_losses,
        "final_loss": clock.epoch_losses[-1] if clock.epoch_losses else None,
    }


# --------------------------------------------------------------------------- latency
def percentiles(times_ms: Sequence[float]) -> dict[str, Any]:
    """p50 / p95 / mean as :func:`softcar.query_latency` defines them, over pooled samples."""
    values = sorted(times_ms)
    return {
        "p50_ms": statistics.median(values),
        "p95_ms": values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))],
        "mean_ms": statistics.fmean(values),
        "samples": len(values),
    }


def interleaved_latency(
    retrievers: Mapping[str, Any], queries: Sequence[str], rounds: int, k: int = 10, warmup: int = 5
) -> dict[str, Any]:
    """Single-query ``retrieve(q, k)`` latency of several retrievers on a shared machine.

    Each sample is one :func:`softcar.query_latency` call on one query; methods alternate query
    by query (order flipped every query and round), so machine load drifts hit all alike.
    """
    names = list(retrievers)
    for name in names:
        query_latency(retrievers[name], list(queries[:warmup]), k=k, warmup=0)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for i, query in enumerate(queries):
            for name in names if (i + r) % 2 == 0 else names[::-1]:
                times[name].append(query_latency(retrievers[name], [query], k=k, warmup=0)["p50_ms"])
    return {name: percentiles(values) for name, values in times.items()}
