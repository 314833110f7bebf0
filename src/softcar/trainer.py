"""The one training loop: ``fit``, ``update``, ``add_documents``, the federated client and the
benchmarks all run :class:`Trainer`.

A step is: loss on a batch → backward → (privatisation, when the optimizer does it) →
data-independent regularisers → parameter update. Regularisers such as the head anchor or
FedProx' proximal term do not touch the data, so their gradient is added *after* a DP optimizer
has clipped and noised the data gradient: added before, Opacus' ``DPOptimizer`` would overwrite
it with the privatised per-sample sum and the term would silently vanish.
"""

from __future__ import annotations

import contextlib
import itertools
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
        device: where batches are moved (``None``: the device of the model's parameters, as a
            Hugging Face ``Trainer`` does; a model without parameters gets its batches as they are).
        mixed_precision: run the loss' forward pass under ``torch.autocast`` (bfloat16) on the
            device of the batches; parameters and optimizer state stay float32.

    Progress is kept in :attr:`global_step`, :attr:`epoch` and :attr:`step_in_epoch` (steps
    completed), and :meth:`state_dict` / :meth:`load_state_dict` save and restore it with the
    parameters, the optimizer state and the random streams, so that a run resumed from a
    checkpoint (:mod:`softcar.training_checkpoint`) continues exactly where it stopped.
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
        mixed_precision: bool = False,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.regularizers = list(regularizers)
        self.callbacks = list(callbacks)
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else None
        self.device = torch.device(device) if device is not None else None
        self.mixed_precision = mixed_precision
        self.global_step = 0
        """Optimisation steps completed (empty batches included), over every call to train."""
        self.epoch = 0
        """The epoch in progress (0-based) within the current run."""
        self.step_in_epoch = 0
        """Batches of :attr:`epoch` already consumed."""
        self.finished = False
        """The last :meth:`train` ran to its end (not interrupted)."""

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
        with self._autocast():
            loss = self.loss(self.model, to_device(batch, self.device))
        loss.backward()
        self._update()
        value = float(loss.detach())
        elapsed = time.perf_counter() - started
        for callback in self.callbacks:
            callback.on_step_end(self, value, size, elapsed)
        return value

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.mixed_precision:
            return contextlib.nullcontext()
        device = self.device or self.parameters[0].device
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def train(self, batches: Iterable[Any], epochs: int = 1, *, max_steps: int | None = None) -> TrainResult:
        """Run ``epochs`` passes over ``batches`` (re-iterated each epoch, e.g. a DataLoader).

        ``max_steps`` caps the steps of this run. After :meth:`load_state_dict` the run starts at
        the restored epoch and position (the batches already consumed are skipped; a batch
        sampler with ``set_epoch`` is told the epoch, so it replays the same order).
        """
        result = TrainResult()
        self.finished = False
        if epochs <= 0:
            self.finished = True
            return result
        per_epoch = len(batches) if isinstance(batches, Sized) else 0
        total = max(epochs * per_epoch - (self.epoch * per_epoch + self.step_in_epoch), 0)
        if max_steps is not None:
            total = min(total, max(max_steps - self.global_step, 0)) if per_epoch else 0
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        started = time.perf_counter()
        self.model.train()
        for callback in self.callbacks:
            callback.on_train_begin(self, total)
        try:
            for epoch in range(self.epoch, epochs):
                self.epoch = epoch
                sampler = getattr(batches, "batch_sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)  # type: ignore[union-attr]
                loss_sum, seen = 0.0, 0
                stop = False
                for batch in itertools.islice(batches, self.step_in_epoch, None):
                    if max_steps is not None and self.global_step >= max_steps:
                        stop = True
                        break
                    self.step_in_epoch += 1
                    self.global_step += 1
                    loss = self.train_step(batch)
                    result.steps += 1
                    if loss is None:
                        result.empty_batches += 1
                        continue
                    size = batch_size_of(batch)
                    loss_sum += loss * size
                    seen += size
                result.examples += seen
                if stop and not seen:
                    break
                result.epoch_losses.append(loss_sum / max(seen, 1))
                logger.info("epoch %d/%d: loss %.4f over %d examples", epoch + 1, epochs, result.epoch_losses[-1], seen)
                if stop:
                    break
                self.epoch, self.step_in_epoch = epoch + 1, 0
                for callback in self.callbacks:
                    callback.on_epoch_end(self, epoch, result.epoch_losses[-1])
            self.finished = True
        finally:
            self.model.eval()
            for parameter in self.parameters:
                parameter.requires_grad_(False)
                parameter.grad = None
            for callback in self.callbacks:
                callback.on_train_end(self)
        result.seconds = time.perf_counter() - started
        return result

    # ------------------------------------------------------------------ resumable state
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, json)``: parameters, optimizer state, random streams and position.

        Tensors go to safetensors, the rest to JSON (no pickle): see
        :mod:`softcar.training_checkpoint`.
        """
        tensors: dict[str, torch.Tensor] = {}
        for index, parameter in enumerate(self.parameters):
            tensors[f"param.{index}"] = parameter.detach()
        optimizer_state = self.optimizer.state_dict()["state"]
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in optimizer_state.items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        generator = getattr(self.loss, "generator", None)
        if isinstance(generator, torch.Generator):
            tensors["rng.loss"] = generator.get_state()
        meta = {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "parameter_shapes": [list(p.shape) for p in self.parameters],
            "optimizer": type(self.optimizer).__name__,
            "optimizer_scalars": scalars,
        }
        return tensors, meta

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; a shape or optimizer mismatch is a ``ValueError``."""
        shapes = [list(p.shape) for p in self.parameters]
        if meta.get("parameter_shapes") != shapes:
            raise ValueError(f"parameter shapes {meta.get('parameter_shapes')} do not match {shapes}")
        if meta.get("optimizer") != type(self.optimizer).__name__:
            raise ValueError(f"optimizer {meta.get('optimizer')!r} is not {type(self.optimizer).__name__!r}")
        with torch.no_grad():
            for index, parameter in enumerate(self.parameters):
                parameter.copy_(tensors[f"param.{index}"])
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, position, key = name.split(".", 2)
                state.setdefault(int(position), {})[key] = value
        for position, values in meta.get("optimizer_scalars", {}).items():
            state.setdefault(int(position), {}).update(values)
        current = self.optimizer.state_dict()
        self.optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        generator = getattr(self.loss, "generator", None)
        if isinstance(generator, torch.Generator) and "rng.loss" in tensors:
            generator.set_state(tensors["rng.loss"])
        self.global_step = int(meta["global_step"])
        self.epoch = int(meta["epoch"])
        self.step_in_epoch = int(meta["step_in_epoch"])
