"""Data-independent penalties for :class:`softcar.trainer.Trainer`.

Both pull parameters toward reference values with an L2 term. Because they never look at
training data, the trainer adds their gradient after a DP optimizer has privatised the data
gradient, so they cost no privacy and are not clipped away.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F


class HeadAnchor:
    """``weight * mean_rows ||W - W0||²``: keeps head rows near where training started.

    The rows start as document (or prototype) embeddings; with few examples per document, free
    rows over-fit the training questions and generalise worse to reworded ones.
    """

    def __init__(self, head_weight: nn.Parameter, weight: float) -> None:
        self.parameter = head_weight
        self.start = head_weight.detach().clone()
        self.weight = weight

    def penalty(self) -> torch.Tensor:
        return self.weight * (self.parameter - self.start).pow(2).sum(dim=1).mean()


class SparseHeadAnchor:
    """:class:`HeadAnchor` restricted to the rows a step touched: its gradient stays sparse.

    ``weight * sum_{i in rows} ||w_i - w0_i||² / N``: each participating row gets exactly the
    gradient the dense anchor would give it, and the other rows none (with a sampled softmax
    they are not updated at all). ``rows()`` returns the participating rows, e.g.
    ``SampledSoftmaxLoss.last_rows``.
    """

    def __init__(self, head_weight: nn.Parameter, weight: float, rows: Callable[[], torch.Tensor | None]) -> None:
        self.parameter = head_weight
        self.start = head_weight.detach().clone()
        self.weight = weight
        self.rows = rows

    def penalty(self) -> torch.Tensor:
        rows = self.rows()
        if rows is None or rows.numel() == 0:
            return torch.zeros((), device=self.parameter.device)
        current = F.embedding(rows, self.parameter, sparse=True)
        return self.weight * (current - self.start[rows]).pow(2).sum() / self.parameter.shape[0]


class ProximalTerm:
    """FedProx' ``mu / 2 * sum ||w - w_global||²`` over the named parameters.

    Args:
        parameters: ``name -> parameter`` (``SoftcarModel.trainable_parameters()`` keys).
        reference: ``name -> tensor``: the global model this round started from.
        mu: the proximal weight.
    """

    def __init__(
        self, parameters: Mapping[str, nn.Parameter], reference: Mapping[str, torch.Tensor], mu: float
    ) -> None:
        missing = set(reference) - set(parameters)
        if missing:
            raise KeyError(f"proximal reference names unknown parameters: {sorted(missing)}")
        self.pairs = [(parameters[n], reference[n].detach().to(parameters[n].device)) for n in sorted(reference)]
        self.mu = mu

    def penalty(self) -> torch.Tensor:
        total = sum((p - ref).pow(2).sum() for p, ref in self.pairs)
        return 0.5 * self.mu * torch.as_tensor(total)
