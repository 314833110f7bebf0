"""Losses for :class:`softcar.trainer.Trainer`: ``loss(model, batch) -> scalar``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F


class ClassificationLoss:
    """Cross-entropy over document ids: the head is a classifier whose classes are documents.

    Scores are inner products of unit vectors, so they are multiplied by ``logit_scale`` (a
    temperature) before the softmax.
    """

    def __init__(self, logit_scale: float = 20.0) -> None:
        self.logit_scale = logit_scale

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        scores = model(batch["input_ids"], batch["attention_mask"])
        return F.cross_entropy(scores * self.logit_scale, batch["labels"])
