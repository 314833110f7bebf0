"""Trainable adapters applied to token embeddings before the frozen transformer blocks.

Both are residual and start as the identity, so a fresh retriever reproduces the frozen
encoder exactly and training can only move away from inner-product search deliberately.
"""

from __future__ import annotations

import torch
from torch import nn

from softcar.config import AdapterKind


class LinearAdapter(nn.Module):
    """``x + W x + b`` with ``W, b`` initialised to zero (a d×d identity-initialised residual)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings + self.proj(embeddings)


class MLPAdapter(nn.Module):
    """``x + up(gelu(down(x)))``: a bottleneck residual with ``up`` zero-initialised."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings + self.up(nn.functional.gelu(self.down(embeddings)))


def build_adapter(kind: AdapterKind, dim: int, hidden: int = 64) -> nn.Module:
    """Build an adapter by name."""
    if kind == "linear":
        return LinearAdapter(dim)
    if kind == "mlp":
        return MLPAdapter(dim, hidden)
    raise ValueError(f"unknown adapter {kind!r}; expected 'linear' or 'mlp'")
