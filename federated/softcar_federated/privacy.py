"""Differential privacy for local training: Opacus wrapping and a ledger that survives rounds.

Why a ledger: Opacus' accountant lives inside a ``PrivacyEngine``. A ClientApp is called once
per round (often in a fresh process), so a new engine each round would report only that round's
ε. We store the accountant's ``history`` — ``(noise_multiplier, sample_rate, steps)`` triples —
in the ClientApp's ``context.state`` *and* on disk (so a restarted SuperNode still knows what it
has spent), and give it back to a new ``RDPAccountant`` every round. The ε we report is therefore
Opacus' own composition over every step this deployment ever released.

Training itself is the core's :class:`softcar.Trainer`; this module only wraps the model,
optimizer and loader with ``PrivacyEngine.make_private``, as Flower's Opacus example does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import register_grad_sampler
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import DataLoader

from softcar import ClassifierHead, Trainer, TrainerCallback, TrainingSetup, write_json
from softcar.errors import SoftcarError

History = list[tuple[float, float, int]]


@register_grad_sampler(ClassifierHead)
def head_grad_sample(layer: ClassifierHead, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
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

    def save(self, path: str | Path) -> None:
        write_json(path, self.model_dump(mode="json"), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
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


def planned_noise(
    target_epsilon: float, delta: float, num_batches: int, epochs_per_round: int, rounds: int
) -> tuple[float | None, float, int]:
    """(σ, sample rate, steps per round) for a budget spread over all planned rounds; σ None = no DP.

    ``num_batches`` is the length of the training loader: Opacus samples each example with
    probability ``1 / num_batches`` per step.
    """
    sample_rate = 1.0 / num_batches
    steps_per_round = epochs_per_round * num_batches
    if math.isinf(target_epsilon):
        return None, sample_rate, steps_per_round
    sigma = calibrate_noise(target_epsilon, delta, sample_rate, steps_per_round * rounds)
    return sigma, sample_rate, steps_per_round


def would_exceed(
    ledger: PrivacyLedger, sigma: float, sample_rate: float, steps: int, delta: float, budget: float
) -> bool:
    """True when one more round at (σ, q, steps) would push ε past the budget."""
    future = list(ledger.history) + [(sigma, sample_rate, steps)]
    return epsilon_of(future, delta) > budget * 1.0001


@dataclass
class PrivateTraining:
    """The Opacus-wrapped model, optimizer and Poisson loader, and the engine that accounts."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader[Any]
    engine: PrivacyEngine

    @property
    def sample_rate(self) -> float:
        return float(self.loader.sample_rate)  # type: ignore[attr-defined]

    def ledger(self, previous: PrivacyLedger) -> PrivacyLedger:
        return PrivacyLedger(history=[tuple(h) for h in self.engine.accountant.history], rounds=previous.rounds + 1)

    def close(self) -> None:
        """Remove Opacus' hooks and attributes from softcar's modules."""
        self.model.cleanup()  # type: ignore[operator]


def make_private(
    setup: TrainingSetup, noise_multiplier: float, max_grad_norm: float, ledger: PrivacyLedger
) -> PrivateTraining:
    """Wrap a retriever's training set-up with Opacus DP-SGD (per-sample clipping, Gaussian
    noise, Poisson sampling); the accountant starts from ``ledger`` so ε accumulates."""
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    engine.accountant.history = [tuple(h) for h in ledger.history]
    setup.model.train()  # Opacus checks training mode (the frozen SLM stays in eval: SoftEncoder.train)
    model, optimizer, loader = engine.make_private(
        module=setup.model,
        optimizer=setup.optimizer,
        data_loader=setup.loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
    )
    return PrivateTraining(model=model, optimizer=optimizer, loader=loader, engine=engine)


class AccountEmptyBatches(TrainerCallback):
    """An empty Poisson batch releases only noise; the trainer skips it, we still count the step
    (which can only over-state ε, never under-state it)."""

    def __init__(self, private: PrivateTraining, noise_multiplier: float) -> None:
        self.private = private
        self.noise_multiplier = noise_multiplier

    def on_empty_batch(self, trainer: Trainer) -> None:
        self.private.engine.accountant.step(
            noise_multiplier=self.noise_multiplier, sample_rate=self.private.sample_rate
        )


# ---------------------------------------------------------------- client-level DP (DP-FedAvg)


class ClientLevelDPError(SoftcarError, ValueError):
    """A client-level DP setting that cannot deliver the ε it promises (refused at start)."""


@dataclass(frozen=True)
class ClientLevelPlan:
    """The DP-FedAvg mechanism of a run: each round samples ``clients_per_round`` of
    ``population`` clients, clips each client's *update* to ``clipping_norm`` (Flower's
    ``fixedclipping_mod``) and adds Gaussian noise of std ``σ·C/m`` to their mean
    (``DifferentialPrivacyClientSideFixedClipping``). One client = one deployment: the guarantee
    covers everything a deployment contributes, not one example."""

    noise_multiplier: float
    clipping_norm: float
    clients_per_round: int
    population: int
    rounds: int
    delta: float
    epsilon: float

    @property
    def sample_rate(self) -> float:
        return self.clients_per_round / self.population

    @property
    def relative_noise(self) -> float:
        """Noise std on the averaged update per coordinate, in units of the clipping norm (σ/m)."""
        return self.noise_multiplier / self.clients_per_round


def plan_client_level(
    *,
    target_epsilon: float,
    delta: float,
    population: int,
    clients_per_round: int,
    rounds: int,
    clipping_norm: float,
    noise_multiplier: float = 0.0,
) -> ClientLevelPlan:
    """Check a DP-FedAvg setting and return its mechanism; raise :class:`ClientLevelDPError`
    naming the problem when the promised (ε, δ) cannot hold.

    ε is Opacus' RDP accountant over ``rounds`` Poisson-subsampled Gaussian releases at sample
    rate ``clients_per_round / population`` (the server samples exactly m clients per round,
    uniformly; the Poisson analysis is the standard approximation, as in McMahan et al. 2018).
    ``noise_multiplier`` 0 calibrates σ to spend ``target_epsilon`` over all rounds.
    """
    if math.isinf(target_epsilon):
        raise ClientLevelDPError("client-level DP needs a finite target-epsilon (use dp='none' for no DP)")
    if population < 1:
        raise ClientLevelDPError("client-level DP needs population >= 1: the number of clients in the federation")
    if not 1 <= clients_per_round <= population:
        raise ClientLevelDPError(
            f"clients-per-round {clients_per_round} is not between 1 and population {population}: the "
            "noise is scaled for that many clients per round, so fewer would not give the promised ε"
        )
    if delta > 1.0 / population:
        raise ClientLevelDPError(
            f"target-delta {delta:g} > 1/population = {1.0 / population:g}: with {population} clients a "
            "δ this large allows releasing one client's data outright; lower target-delta"
        )
    q = clients_per_round / population
    sigma = noise_multiplier or calibrate_noise(target_epsilon, delta, q, rounds)
    epsilon = epsilon_of([(sigma, q, rounds)], delta)
    if epsilon > target_epsilon * 1.0001:
        raise ClientLevelDPError(
            f"noise-multiplier {sigma:g} with {clients_per_round} of {population} clients per round over {rounds} "
            f"rounds spends ε = {epsilon:.3g} > target-epsilon {target_epsilon:g}; raise the noise multiplier "
            "(0 calibrates it), sample fewer clients per round, or run fewer rounds"
        )
    return ClientLevelPlan(
        noise_multiplier=sigma,
        clipping_norm=clipping_norm,
        clients_per_round=clients_per_round,
        population=population,
        rounds=rounds,
        delta=delta,
        epsilon=epsilon,
    )
