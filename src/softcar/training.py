"""The training loop shared by ``fit``, ``update`` and ``add_documents``.

Only the adapter and the classifier head receive gradients; the SLM is frozen. The loss is
cross-entropy over *all* documents, i.e. the head is a classifier whose classes are the
document ids, and its top logits are the retrieved documents.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from softcar.config import TrainConfig
from softcar.model import SoftcarModel

logger = logging.getLogger(__name__)

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]


def trainable_parameters(model: SoftcarModel, config: TrainConfig) -> list[dict]:
    """Optimizer parameter groups; the frozen SLM never appears here."""
    groups: list[dict] = []
    if config.train_adapter:
        groups.append({"params": list(model.adapter.parameters()), "lr": config.learning_rate})
    if config.train_head:
        groups.append({"params": [model.head.weight], "lr": config.head_learning_rate})
    return groups


def _length_bucketed_batches(
    examples: Sequence[tuple[str, int]], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffled batches of similar-length texts: far less padding through the frozen SLM."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(examples[i][0]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def train_classifier(
    model: SoftcarModel,
    examples: Sequence[tuple[str, int]],
    tokenize: Tokenize,
    config: TrainConfig,
    *,
    epochs: int,
    device: torch.device,
    description: str = "training",
) -> list[float]:
    """Train adapter and/or head on ``(text, head row)`` examples; returns the mean loss per epoch."""
    groups = trainable_parameters(model, config)
    if not groups or not examples or epochs <= 0:
        return []
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for group in groups:
        for parameter in group["params"]:
            parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    anchor = model.head.weight.detach().clone() if config.train_head and config.head_anchor > 0 else None
    rng = random.Random(config.seed)
    losses: list[float] = []
    steps_per_epoch = (len(examples) + config.batch_size - 1) // config.batch_size
    model.train()
    try:
        with tqdm(
            total=epochs * steps_per_epoch, desc=description, disable=not config.show_progress, leave=False
        ) as bar:
            for epoch in range(epochs):
                total = 0.0
                for batch_ids in _length_bucketed_batches(examples, config.batch_size, rng):
                    batch = [examples[i] for i in batch_ids]
                    inputs = {k: v.to(device) for k, v in tokenize([t for t, _ in batch]).items()}
                    labels = torch.tensor([label for _, label in batch], device=device)
                    scores = model(inputs["input_ids"], inputs["attention_mask"])
                    loss = F.cross_entropy(scores * config.logit_scale, labels)
                    if anchor is not None:
                        drift = (model.head.weight - anchor).pow(2).sum(dim=1).mean()
                        loss = loss + config.head_anchor * drift
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(batch)
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                losses.append(total / len(examples))
                logger.info("%s: epoch %d/%d loss %.4f", description, epoch + 1, epochs, losses[-1])
    finally:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    return losses
