"""One round of a deployment's local training: the core trainer, optionally under Opacus DP-SGD.

The same :class:`softcar.Trainer` as ``ClassifierRetriever.fit``; with DP the model, optimizer
and loader are first wrapped by Opacus (:func:`softcar_federated.privacy.make_private`). FedProx'
proximal term is a regulariser, so the trainer adds its gradient after privatisation.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from softcar import ClassifierRetriever, ProximalTerm, Regularizer, TrainConfig, Trainer, TrainerCallback
from softcar_federated.privacy import AccountEmptyBatches, PrivacyLedger, make_private

logger = logging.getLogger(__name__)

Example = tuple[str, int]


@dataclass
class DPParams:
    """DP-SGD parameters of a round: noise multiplier σ and per-sample clipping norm C."""

    noise_multiplier: float
    max_grad_norm: float


@dataclass
class RoundResult:
    loss: float
    steps: int
    sample_rate: float
    examples: int


def train_round(
    retriever: ClassifierRetriever,
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    epochs: int,
    dp: DPParams | None = None,
    ledger: PrivacyLedger | None = None,
    proximal: Mapping[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    callbacks: Sequence[TrainerCallback] = (),
) -> tuple[RoundResult, PrivacyLedger]:
    """Train the retriever's adapter (+ head) on ``examples``; returns the round and the new ledger.

    Without ``dp`` this is exactly ``fit``'s training (same set-up, same trainer). ``proximal``
    (``trainable_parameters`` names → global tensors) adds FedProx' ``mu/2 ||w - w_g||²``.
    """
    if not examples:
        raise ValueError("no training examples")
    ledger = ledger or PrivacyLedger()
    # Opacus needs per-sample gradients of the head module: the exact softmax, dense AdamW.
    setup = retriever.training_setup(examples, config, sampled=False if dp is not None else None)
    regularizers: list[Regularizer] = list(setup.regularizers)
    if proximal and proximal_mu > 0:
        named = setup.model.trainable_parameters()
        regularizers.append(ProximalTerm(named, {k: v for k, v in proximal.items() if k in named}, proximal_mu))
    model, optimizer, loader = setup.model, setup.optimizer, setup.loader
    private = None
    extra: list[TrainerCallback] = []
    sample_rate = 1.0 / max(len(loader), 1)
    if dp is not None:
        torch.seed()  # noise and Poisson sampling from fresh OS entropy, never a replayable seed
        private = make_private(setup, dp.noise_multiplier, dp.max_grad_norm, ledger)
        model, optimizer, loader = private.model, private.optimizer, private.loader
        sample_rate = private.sample_rate
        extra.append(AccountEmptyBatches(private, dp.noise_multiplier))
    trainer = Trainer(
        model, optimizer, setup.loss, regularizers=regularizers, callbacks=[*extra, *callbacks], device=retriever.device
    )
    try:
        with warnings.catch_warnings():
            # Opacus' hooks on the adapter fire with no input gradients (token embeddings are
            # frozen): expected here, and PyTorch warns about it on every step.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            result = trainer.train(loader, epochs)
    finally:
        if private is not None:
            private.close()
    new_ledger = private.ledger(ledger) if private is not None else ledger
    mean_loss = sum(result.epoch_losses) / max(len(result.epoch_losses), 1)
    return RoundResult(loss=mean_loss, steps=result.steps, sample_rate=sample_rate, examples=len(examples)), new_ledger


def warm_start(retriever: ClassifierRetriever, config: TrainConfig, epochs: int) -> RoundResult:
    """Non-private pre-training on what is public in the threat model: the documents' own text
    and pseudo-queries drawn from it, never a user's question (the server holds no feedback)."""
    examples = retriever.training_examples([])
    result, _ = train_round(retriever, examples, config, epochs=epochs)
    logger.info("warm start: %d document-only examples, %d epochs, loss %.4f", len(examples), epochs, result.loss)
    return result
