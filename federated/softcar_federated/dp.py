"""Local training with Opacus DP-SGD, and a privacy ledger that survives rounds and restarts.

Why a ledger: Opacus' accountant lives inside a ``PrivacyEngine``. A ClientApp is called once
per round (often in a fresh process), so a new engine each round would report only that round's
ε. We store the accountant's ``history`` — ``(noise_multiplier, sample_rate, steps)`` triples —
in the ClientApp's ``context.state`` *and* on disk (so a restarted SuperNode still knows what it
has spent), and give it back to a new ``RDPAccountant`` every round. The ε we report is therefore
Opacus' own composition over every step this deployment ever released.

The adapter and the head are trained together under one per-sample clipping norm even when only
the adapter is shared: a head trained without DP would make the adapter's update depend on the
data outside the DP mechanism.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import register_grad_sampler
from pydantic import BaseModel, Field
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from softcar.model import ClassifierHead, SoftcarModel

logger = logging.getLogger(__name__)

Tokenize = Callable[..., dict[str, torch.Tensor]]
History = list[tuple[float, float, int]]


@register_grad_sampler(ClassifierHead)
def _head_grad_sample(layer: ClassifierHead, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Per-sample gradient of ``F.linear(q, W)``: the outer product ``backprop ⊗ q`` per sample
    (Opacus knows nn.Linear but not softcar's head module, which holds a bare weight)."""
    return {layer.weight: torch.einsum("n...i,n...j->nij", backprops, activations[0])}


class PrivacyLedger(BaseModel):
    """Cumulative DP-SGD spending of one deployment (JSON on disk, a ConfigRecord in Flower)."""

    history: list[tuple[float, float, int]] = Field(default_factory=list)
    rounds: int = 0

    def epsilon(self, delta: float) -> float:
        """Opacus' RDP ε of everything released so far (0 before any step)."""
        return epsilon_of(self.history, delta)

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        path = Path(path)
        if not path.is_file():
            return cls()
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def to_flat(self) -> dict[str, list[float] | list[int] | int]:
        """Flat lists for a Flower ConfigRecord (records hold scalars and lists, not tuples)."""
        return {
            "noise": [float(h[0]) for h in self.history],
            "rate": [float(h[1]) for h in self.history],
            "steps": [int(h[2]) for h in self.history],
            "rounds": self.rounds,
        }

    @classmethod
    def from_flat(cls, flat: dict) -> PrivacyLedger:
        history = [(float(n), float(r), int(s)) for n, r, s in zip(flat["noise"], flat["rate"], flat["steps"])]
        return cls(history=history, rounds=int(flat["rounds"]))

    def merged(self, other: PrivacyLedger) -> PrivacyLedger:
        """The ledger that has spent more (never under-report after a partial restart)."""
        return other if sum(s for *_, s in other.history) > sum(s for *_, s in self.history) else self


def epsilon_of(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε of a sequence of Poisson-subsampled Gaussian steps, by Opacus' RDP accountant."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in history]
    return float(accountant.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, total_steps: int) -> float:
    """σ such that ``total_steps`` steps at ``sample_rate`` spend at most ``target_epsilon``."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=total_steps,
            accountant="rdp",
        )
    )


@dataclass
class DPSettings:
    """One round of local training. ``noise_multiplier`` None means no DP at all (ε = ∞)."""

    epochs: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float
    logit_scale: float
    max_length: int
    noise_multiplier: float | None
    max_grad_norm: float
    train_head: bool = True
    seed: int | None = None  # None for real DP runs: sampling and noise must not be predictable
    show_progress: bool = False


@dataclass
class RoundResult:
    loss: float
    steps: int
    sample_rate: float
    examples: int


def encode_examples(examples: Sequence[tuple[str, int]], tokenize: Tokenize, max_length: int) -> TensorDataset:
    """Tokenise all examples once, padded to one length so Poisson batches can be stacked."""
    texts = [t for t, _ in examples]
    encoded = tokenize(texts, max_length=max_length)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if ids.shape[1] < max_length:  # pad to a fixed width (the tokenizer pads to the longest)
        pad = max_length - ids.shape[1]
        ids = F.pad(ids, (0, pad), value=0)
        mask = F.pad(mask, (0, pad), value=0)
    labels = torch.tensor([label for _, label in examples], dtype=torch.long)
    return TensorDataset(ids, mask, labels)


def _param_groups(model: SoftcarModel, settings: DPSettings) -> list[dict]:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    groups = [{"params": list(model.adapter.parameters()), "lr": settings.learning_rate}]
    if settings.train_head:
        groups.append({"params": [model.head.weight], "lr": settings.head_learning_rate})
    for group in groups:
        for parameter in group["params"]:
            parameter.requires_grad_(True)
    return groups


def make_private(
    model: SoftcarModel,
    dataset: TensorDataset,
    settings: DPSettings,
    ledger: PrivacyLedger,
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader, PrivacyEngine]:
    """Wrap model, optimizer and a Poisson-sampling loader with Opacus; the engine's accountant
    starts from ``ledger`` so ε accumulates across rounds."""
    if settings.noise_multiplier is None:
        raise ValueError("make_private needs a noise multiplier")
    groups = _param_groups(model, settings)
    model.train()  # Opacus validates training mode (the frozen SLM stays in eval: see SoftEncoder.train)
    optimizer = torch.optim.Adam(groups)
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=False)
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    engine.accountant.history = [tuple(h) for h in ledger.history]
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
    )
    return private_model, private_optimizer, private_loader, engine


def train_round(
    model: SoftcarModel,
    examples: Sequence[tuple[str, int]],
    tokenize: Tokenize,
    settings: DPSettings,
    ledger: PrivacyLedger,
    *,
    proximal: dict[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
) -> tuple[RoundResult, PrivacyLedger]:
    """Train adapter (+ head) for ``settings.epochs`` on ``examples``; returns the new ledger.

    With DP: Opacus DP-SGD (per-sample clipping, Gaussian noise, Poisson sampling). Without
    (``noise_multiplier is None``): the same loop with plain shuffled mini-batches, which is the
    ε = ∞ reference and the centralised baseline. ``proximal`` adds FedProx' ``mu/2 ||w - w_g||²``
    (a data-independent term, so it is added after the private gradient, outside clipping).
    """
    if not examples:
        raise ValueError("no training examples")
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    dataset = encode_examples(examples, tokenize, settings.max_length)
    private = settings.noise_multiplier is not None
    engine = None
    if private:
        train_model, optimizer, loader, engine = make_private(model, dataset, settings, ledger)
        sample_rate = float(loader.sample_rate)
    else:
        groups = _param_groups(model, settings)
        optimizer = torch.optim.Adam(groups)
        generator = torch.Generator()
        if settings.seed is not None:
            generator.manual_seed(settings.seed)
        loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=generator)
        train_model = model
        sample_rate = 1.0 / len(loader)
    named = dict(model.named_parameters())
    prox = {name: tensor.to(named[name].device) for name, tensor in (proximal or {}).items() if name in named}
    steps, total, seen = 0, 0.0, 0
    model.train()
    try:
        with tqdm(total=settings.epochs * len(loader), desc="local round", disable=not settings.show_progress, leave=False) as bar:
            for _ in range(settings.epochs):
                for ids, mask, labels in loader:
                    steps += 1
                    bar.update(1)
                    if ids.shape[0] == 0:
                        # An empty Poisson batch releases only noise; we skip the update but still
                        # count the step, which can only over-state ε, never under-state it.
                        if engine is not None:
                            engine.accountant.step(noise_multiplier=settings.noise_multiplier, sample_rate=sample_rate)
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    scores = train_model(ids, mask)
                    loss = F.cross_entropy(scores * settings.logit_scale, labels)
                    with warnings.catch_warnings():
                        # Opacus' hooks on the adapter fire with no input gradients (token embeddings
                        # are frozen): expected here, and PyTorch warns about it on every step.
                        warnings.filterwarnings("ignore", message="Full backward hook is firing")
                        loss.backward()
                    if prox and proximal_mu > 0:
                        with torch.no_grad():
                            for name, anchor in prox.items():
                                parameter = named[name]
                                if parameter.grad is not None:
                                    parameter.grad.add_(proximal_mu * (parameter - anchor))
                    optimizer.step()
                    total += float(loss.detach()) * ids.shape[0]
                    seen += ids.shape[0]
    finally:
        model.eval()
        if engine is not None:
            train_model._close()  # type: ignore[operator]  # remove Opacus hooks from softcar's modules
        for parameter in model.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None
    new_ledger = ledger
    if engine is not None:
        new_ledger = PrivacyLedger(history=[tuple(h) for h in engine.accountant.history], rounds=ledger.rounds + 1)
    result = RoundResult(loss=total / max(seen, 1), steps=steps, sample_rate=sample_rate, examples=len(dataset))
    return result, new_ledger


def planned_noise(
    target_epsilon: float, delta: float, num_examples: int, batch_size: int, epochs_per_round: int, rounds: int
) -> tuple[float | None, float, int]:
    """(σ, sample rate, steps per round) for a budget spread over all planned rounds; σ None = no DP."""
    batches = math.ceil(num_examples / batch_size)  # Opacus samples each example with q = 1/batches
    sample_rate = 1.0 / batches
    steps_per_round = epochs_per_round * batches
    if math.isinf(target_epsilon):
        return None, sample_rate, steps_per_round
    sigma = calibrate_noise(target_epsilon, delta, sample_rate, steps_per_round * rounds)
    return sigma, sample_rate, steps_per_round


def would_exceed(ledger: PrivacyLedger, sigma: float, sample_rate: float, steps: int, delta: float, budget: float) -> bool:
    """True when one more round at (σ, q, steps) would push ε past the budget."""
    future = list(ledger.history) + [(sigma, sample_rate, steps)]
    return epsilon_of(future, delta) > budget * 1.0001


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def dump_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)
