"""The one training loop: ``fit``, ``update``, ``add_documents``, the federated client and the
benchmarks all run :class:`Trainer`.

A step is: loss on a batch → backward → (privatisation, when the optimizer does it) →
data-independent regularisers → parameter update. Regularisers such as the head anchor or
FedProx' proximal term do not touch the data, so their gradient is added *after* a DP optimizer
has clipped and noised the data gradient: added before, Opacus' ``DPOptimizer`` would overwrite
it with the privatised per-sample sum and the term would silently vanish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss(model, batch) -> scalar``: what one batch costs (see :mod:`softcar.losses`)."""


class Regularizer(Protocol):
    """A data-independent penalty on parameters (its gradient is added after privatisation)."""

    def penalty(self) -> torch.Tensor: ...


class TrainerCallback:
    """Hooks into the loop (progress, timing, privacy accounting); every method is optional."""

    def on_train_begin(self, trainer: Trainer, total_steps: int) -> None: ...

    def on_step_end(self, trainer: Trainer, loss: float, batch_size: int, seconds: float) -> None: ...

    def on_empty_batch(self, trainer: Trainer) -> None:
        """A Poisson-sampled batch came out empty: no update was made."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, mean_loss: float) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class ProgressBar(TrainerCallback):
    """A tqdm bar over all steps with the running loss (and an ETA, from tqdm)."""

    def __init__(self, description: str = "training", enabled: bool = True) -> None:
        self.description, self.enabled = description, enabled
        self._bar: Any = None

    def on_train_begin(self, trainer: Trainer, total_steps: int) -> None:
        self._bar = tqdm(total=total_steps, desc=self.description, disable=not self.enabled, leave=False)

    def on_step_end(self, trainer: Trainer, loss: float, batch_size: int, seconds: float) -> None:
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{loss:.3f}")

    def on_empty_batch(self, trainer: Trainer) -> None:
        self._bar.update(1)

    def on_train_end(self, trainer: Trainer) -> None:
        self._bar.close()


@dataclass
class StepTimer(TrainerCallback):
    """Wall time of every optimisation step (forward + backward + update), for benchmarks."""

    seconds: list[float] = field(default_factory=list)
    examples: int = 0

    def on_step_end(self, trainer: Trainer, loss: float, batch_size: int, seconds: float) -> None:
        self.seconds.append(seconds)
        self.examples += batch_size


@dataclass
class TrainResult:
    """What a call to :meth:`Trainer.train` did."""

    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    empty_batches: int = 0
    examples: int = 0
    seconds: float = 0.0


def batch_size_of(batch: Any) -> int:
    """Number of examples in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values: Iterable[Any] = batch.values() if isinstance(batch, Mapping) else batch
    for value in values:
        if isinstance(value, (torch.Tensor, Mapping, list, tuple)):
            return batch_size_of(value)
    raise TypeError(f"cannot tell the size of a batch of type {type(batch).__name__}")


def to_device(batch: Any, device: torch.device | None) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Train ``model`` with ``optimizer`` on batches scored by ``loss``.

    Works with a plain ``torch.optim`` optimizer and with one that privatises gradients before
    its update, as Opacus' ``DPOptimizer`` does (``pre_step()`` clips, noises and accounts, then
    ``original_optimizer.step()`` updates): regularisers are applied between the two.

    Args:
        model: the module to train (or Opacus' wrapper of it); it is put in train mode during
            :meth:`train` and back in eval mode after.
        optimizer: owns the trainable parameters; only they get ``requires_grad`` while training.
        loss: ``loss(model, batch) -> scalar tensor``.
        regularizers: data-independent penalties (:mod:`softcar.regularizers`).
        callbacks: progress, timing, accounting (:class:`TrainerCallback`).
        device: where batches are moved (``None``: leave them where they are).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: LossFn,
        *,
        regularizers: Sequence[Regularizer] = (),
        callbacks: Sequence[TrainerCallback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.regularizers = list(regularizers)
        self.callbacks = list(callbacks)
        self.device = torch.device(device) if device is not None else None

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _update(self) -> bool:
        """Privatise (if the optimizer does), add regulariser gradients, update. False: skipped."""
        privatise = getattr(self.optimizer, "pre_step", None)
        inner = getattr(self.optimizer, "original_optimizer", None)
        if privatise is not None and inner is not None:
            if not privatise():
                return False
            step = inner.step
        else:
            step = self.optimizer.step
        if self.regularizers:
            penalty = torch.stack([r.penalty() for r in self.regularizers]).sum()
            if penalty.requires_grad:
                penalty.backward()
        step()
        return True

    def train_step(self, batch: Any) -> float | None:
        """One optimisation step on ``batch``; returns its data loss (``None`` for an empty batch)."""
        size = batch_size_of(batch)
        if size == 0:
            for callback in self.callbacks:
                callback.on_empty_batch(self)
            return None
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model, to_device(batch, self.device))
        loss.backward()
        self._update()
        value = float(loss.detach())
        elapsed = time.perf_counter() - started
        for callback in self.callbacks:
            callback.on_step_end(self, value, size, elapsed)
        return value

    def train(self, batches: Iterable[Any], epochs: int = 1) -> TrainResult:
        """Run ``epochs`` passes over ``batches`` (re-iterated each epoch, e.g. a DataLoader)."""
        result = TrainResult()
        if epochs <= 0:
            return result
        total = epochs * len(batches) if isinstance(batches, Sized) else 0
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        started = time.perf_counter()
        self.model.train()
        for callback in self.callbacks:
            callback.on_train_begin(self, total)
        try:
            for epoch in range(epochs):
                loss_sum, seen = 0.0, 0
                for batch in batches:
                    loss = self.train_step(batch)
                    result.steps += 1
                    if loss is None:
                        result.empty_batches += 1
                        continue
                    size = batch_size_of(batch)
                    loss_sum += loss * size
                    seen += size
                result.examples += seen
                result.epoch_losses.append(loss_sum / max(seen, 1))
                logger.info("epoch %d/%d: loss %.4f over %d examples", epoch + 1, epochs, result.epoch_losses[-1], seen)
                for callback in self.callbacks:
                    callback.on_epoch_end(self, epoch, result.epoch_losses[-1])
        finally:
            self.model.eval()
            for parameter in self.parameters:
                parameter.requires_grad_(False)
                parameter.grad = None
            for callback in self.callbacks:
                callback.on_train_end(self)
        result.seconds = time.perf_counter() - started
        return result
