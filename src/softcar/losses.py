"""Losses for :class:`softcar.trainer.Trainer`: ``loss(model, batch) -> scalar``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from softcar.augmentation import QueryAugmenter
from softcar.config import TrainConfig


class ClassificationLoss:
    """Cross-entropy over document ids: the head is a classifier whose classes are documents.

    Scores are inner products of unit vectors, so they are multiplied by ``logit_scale`` (a
    temperature) before the softmax. Options (all off by default, see ``TrainConfig``):

    - ``label_smoothing``: spread this much target mass over the other documents, so the head
      is not pushed to over-confident rows for the questions it has seen.
    - ``hard_negatives`` > 0: the softmax runs over the true document and the head's own top
      ``hard_negatives`` other documents only: training concentrates on the confusers.
    - ``margin_weight`` > 0: adds ``margin_weight · relu(margin − (s_true − s_hardest_other))``,
      a pairwise term on raw inner products.
    - ``augmenter``: query augmentation (token dropout, word-order noise) of each batch.
    """

    def __init__(
        self,
        logit_scale: float = 20.0,
        *,
        label_smoothing: float = 0.0,
        hard_negatives: int = 0,
        margin: float = 0.2,
        margin_weight: float = 0.0,
        augmenter: QueryAugmenter | None = None,
    ) -> None:
        self.logit_scale = logit_scale
        self.label_smoothing = label_smoothing
        self.hard_negatives = hard_negatives
        self.margin = margin
        self.margin_weight = margin_weight
        self.augmenter = augmenter

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.augmenter is not None and self.augmenter.active:
            batch = self.augmenter(batch)
        scores = model(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        return self.from_scores(scores, labels)

    def from_scores(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``[batch, documents]`` scores against the true document ids."""
        true = scores.gather(1, labels[:, None])
        others = scores.scatter(1, labels[:, None], float("-inf"))
        if 0 < self.hard_negatives < scores.shape[1] - 1:
            negatives = others.topk(self.hard_negatives, dim=1).values
            logits = torch.cat([true, negatives], dim=1) * self.logit_scale
            target = torch.zeros_like(labels)
        else:
            logits, target = scores * self.logit_scale, labels
        loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        if self.margin_weight > 0 and scores.shape[1] > 1:
            hardest = others.max(dim=1, keepdim=True).values
            loss = loss + self.margin_weight * F.relu(self.margin - (true - hardest)).mean()
        return loss


def training_loss(config: TrainConfig) -> ClassificationLoss:
    """The loss ``TrainConfig`` asks for (plain cross-entropy with the defaults)."""
    augmenter = QueryAugmenter(config.token_dropout, config.word_swap, config.seed)
    return ClassificationLoss(
        config.logit_scale,
        label_smoothing=config.label_smoothing,
        hard_negatives=config.hard_negatives,
        margin=config.margin,
        margin_weight=config.margin_weight,
        augmenter=augmenter if augmenter.active else None,
    )
