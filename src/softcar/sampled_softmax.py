"""Sampled softmax over the head: a training step whose cost does not grow with the corpus.

The full cross-entropy scores every head row on every step. Above
``TrainConfig.sampled_softmax_above`` rows, each batch is instead scored against a candidate set:

* **exact members** ``E``: the batch's positives (which are also every other query's in-batch
  negatives) and each query's hard negatives, the top rows of the *current* head for it
  (mined on detached tensors, see :class:`ExactMiner`);
* **uniform negatives** ``U``: ``m`` rows drawn uniformly (with replacement) from the rows not in ``E``.

With the log-Q correction each uniform column's logit is lowered by ``log(m / (N - |E|))``, so
the softmax denominator is the exact sum over ``E`` plus an unbiased estimate of the sum over the
``N - |E|`` other rows. Rows of ``E`` are in the set with probability one given the batch, so
they need no correction; when ``m >= N - |E|`` every row is an exact member and the loss *is* the
full softmax.

Head rows are gathered with ``F.embedding(..., sparse=True)``: the head's gradient is a sparse
tensor over the participating rows only (:attr:`SampledSoftmaxLoss.last_rows`), which
:class:`softcar.sparse_adam.RowSparseAdam` and :class:`softcar.regularizers.SparseHeadAnchor`
use so that no step touches, or costs, the other rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from softcar.model import SoftcarModel


class HardNegativeMiner(Protocol):
    """``miner(queries [B, d], head [N, d], k) -> row ids [B, k]``: the rows scoring highest.

    The hook for an approximate index over the head (an ANN index for very large heads); it
    is called on detached tensors and may return rows that are positives (they are handled).
    """

    def __call__(self, queries: torch.Tensor, head: torch.Tensor, k: int) -> torch.Tensor: ...


class ExactMiner:
    """Exact top-``k`` of ``queries @ head.T``, computed over row chunks (bounded memory).

    Cost is ``O(B · N · d)`` per step; above ``max_rows`` rows it searches a uniform pool of
    ``pool`` rows instead (bounded cost; ``softcar.IndexMiner`` mines from an ANN index, which
    is what a retriever uses above that size).
    """

    def __init__(
        self,
        chunk_rows: int = 65536,
        max_rows: int = 100_000,
        pool: int = 16384,
        generator: torch.Generator | None = None,
    ) -> None:
        self.chunk_rows, self.max_rows, self.pool, self.generator = chunk_rows, max_rows, pool, generator

    @torch.no_grad()
    def __call__(self, queries: torch.Tensor, head: torch.Tensor, k: int) -> torch.Tensor:
        rows = head.shape[0]
        candidates: torch.Tensor | None = None
        if rows > self.max_rows:
            candidates = torch.randint(rows, (self.pool,), device=head.device, generator=self.generator)
            head = head[candidates]
            rows = self.pool
        k = min(k, rows)
        best_scores = torch.full((queries.shape[0], 0), -math.inf, device=queries.device, dtype=queries.dtype)
        best_rows = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
        for start in range(0, rows, self.chunk_rows):
            chunk = head[start : start + self.chunk_rows]
            scores = queries @ chunk.to(queries.dtype).T
            top = torch.topk(scores, min(k, chunk.shape[0]), dim=1)
            best_scores = torch.cat([best_scores, top.values], dim=1)
            best_rows = torch.cat([best_rows, top.indices + start], dim=1)
            if best_scores.shape[1] > k:
                keep = torch.topk(best_scores, k, dim=1).indices
                best_scores, best_rows = best_scores.gather(1, keep), best_rows.gather(1, keep)
        return best_rows if candidates is None else candidates[best_rows]


def uniform_complement(
    num_rows: int, exclude: torch.Tensor, count: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``count`` rows drawn uniformly with replacement from ``range(num_rows)`` minus ``exclude``."""
    device = exclude.device
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    drawn: list[torch.Tensor] = []
    have = 0
    while have < count:
        proposal = torch.randint(num_rows, (2 * count,), device=device, generator=generator)
        proposal = proposal[~torch.isin(proposal, exclude)]
        drawn.append(proposal)
        have += int(proposal.numel())
    return torch.cat(drawn)[:count]


class SampledSoftmaxLoss:
    """Cross-entropy of each query against its positive, hard, in-batch and uniform negatives.

    Args:
        logit_scale: the temperature, as in :class:`softcar.losses.ClassificationLoss`.
        hard_negatives: hard negatives mined per query from the current head.
        uniform_negatives: uniform negatives per batch (shared by its queries).
        log_q: apply the log-Q correction to the uniform columns (off only to show its effect).
        miner: how hard negatives are found (default :class:`ExactMiner`).
        generator: the random stream of the uniform negatives (saved with training checkpoints).
    """

    def __init__(
        self,
        logit_scale: float = 20.0,
        *,
        hard_negatives: int = 8,
        uniform_negatives: int = 1024,
        log_q: bool = True,
        miner: HardNegativeMiner | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.logit_scale = logit_scale
        self.hard_negatives = hard_negatives
        self.uniform_negatives = uniform_negatives
        self.log_q = log_q
        self.generator = generator
        self.miner: HardNegativeMiner = miner or ExactMiner(generator=generator)
        self.last_rows: torch.Tensor | None = None
        """Unique head rows that took part in the last batch (what sparse updates may touch)."""

    def candidates(self, queries: torch.Tensor, labels: torch.Tensor, head: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Candidate row ids (exact members first) and how many of them are exact members."""
        members = [labels]
        if self.hard_negatives > 0:
            members.append(self.miner(queries.detach(), head.detach(), self.hard_negatives).reshape(-1))
        exact = torch.unique(torch.cat(members))
        rest = head.shape[0] - exact.numel()
        if self.uniform_negatives >= rest:
            # Every row is sampled: the exact, full softmax (column order does not matter).
            everything = torch.arange(head.shape[0], device=head.device)
            return everything, head.shape[0]
        uniform = uniform_complement(head.shape[0], exact, self.uniform_negatives, self.generator)
        return torch.cat([exact, uniform]), int(exact.numel())

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        assert isinstance(model, SoftcarModel), "the sampled softmax needs the SoftcarModel itself"
        queries = model.embed(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"].to(queries.device)
        head = model.head.weight
        columns, exact = self.candidates(queries, labels, head)
        rows = F.embedding(columns, head, sparse=True)
        logits = (queries @ rows.to(queries.dtype).T).float() * self.logit_scale
        uniform = columns.numel() - exact
        if self.log_q and uniform:
            correction = math.log(uniform / (head.shape[0] - exact))
            logits = torch.cat([logits[:, :exact], logits[:, exact:] - correction], dim=1)
        # Each label's column among the exact members.
        order = columns[:exact]
        sorted_members, permutation = torch.sort(order)
        target = permutation[torch.searchsorted(sorted_members, labels)]
        self.last_rows = torch.unique(columns)
        return F.cross_entropy(logits, target)
