"""The trainable retrieval model: soft encoder + classifier head over document ids."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from softcar.encoder import SoftEncoder


class ClassifierHead(nn.Module):
    """One row per document; a query's score for a document is ``normalize(q) · row``.

    Rows start as the normalised frozen embedding of their document, so before training the
    ranking is exactly cosine inner-product search with the same encoder.
    """

    def __init__(self, dim: int, num_documents: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_documents, dim))

    @property
    def num_documents(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, query_vectors: torch.Tensor) -> torch.Tensor:
        return F.linear(query_vectors, self.weight)

    @torch.no_grad()
    def append_rows(self, rows: torch.Tensor) -> None:
        """Grow the head with new rows (new documents); existing rows are kept as they are."""
        rows = rows.to(self.weight.device, self.weight.dtype)
        self.weight = nn.Parameter(torch.cat([self.weight.data, rows], dim=0), requires_grad=self.weight.requires_grad)


class SoftcarModel(nn.Module):
    """``forward(input_ids, attention_mask) -> scores [batch, num_documents]``."""

    def __init__(self, encoder: SoftEncoder, num_documents: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ClassifierHead(encoder.dim, num_documents)

    @property
    def adapter(self) -> nn.Module:
        return self.encoder.adapter

    def trainable_parameters(self, parts: Sequence[str] = ("adapter", "head")) -> dict[str, nn.Parameter]:
        """``adapter.<name>`` and ``head.weight``: the one key scheme of trainable state.

        Checkpoints, federated updates and the FedProx reference all use these names.
        """
        unknown = set(parts) - {"adapter", "head"}
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; expected 'adapter' and/or 'head'")
        named: dict[str, nn.Parameter] = {}
        if "adapter" in parts:
            named.update({f"adapter.{n}": p for n, p in self.adapter.named_parameters()})
        if "head" in parts:
            named["head.weight"] = self.head.weight
        return named

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm query vectors through the adapter."""
        return F.normalize(self.encoder(input_ids, attention_mask), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))
