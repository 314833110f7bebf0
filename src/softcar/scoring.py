"""How a query's scores are put together, and how that is calibrated on feedback.

``soft``: the head's inner products (adapter-embedded query · document rows). Question rows
raise a document to ``question similarity - offset`` when that is higher. With a hybrid weight
``α > 0`` the result is fused with BM25: ``α · z(bm25) + (1 - α) · z(soft)``, ``z`` standardising
each query's scores over the corpus so that the two scales are comparable.

A repeat of a remembered question (similarity ≥ ``REPEAT_SIMILARITY``) always returns its
document first: confirmed feedback is honoured before any training or calibration.

Calibration picks ``α`` and the offset by leave-one-out on labelled / feedback pairs: each
question is scored as if it had never been seen (its own question row hidden). That is exactly
the situation of a question about a document nobody has asked about yet, so a setting that
helps known questions but steals other documents' questions loses here. Among settings within
``tolerance`` of the best leave-one-out recall, the one that uses question rows most (smallest
offset) wins: rewordings of known questions then benefit, at no measurable cost elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel

HYBRID_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
REPEAT_SIMILARITY = 0.98
"""A question this similar to a remembered one is a repeat: its document wins whatever the offset."""
OFFSET_GRID = (None, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


class Calibration(BaseModel):
    """The scoring settings in force; stored in checkpoints."""

    hybrid_weight: float = 0.0
    question_offset: float | None = None
    """``None``: question rows are not used for scoring."""
    leave_one_out_recall: float | None = None
    """R@1 of the chosen setting on held-out feedback (``None``: not calibrated)."""
    pairs: int = 0


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """Standardise each row (query) over its columns (documents)."""
    return (scores - scores.mean(dim=1, keepdim=True)) / scores.std(dim=1, keepdim=True).clamp(min=1e-6)


def combine(
    soft: torch.Tensor, question_best: torch.Tensor | None, lexical: torch.Tensor | None, calibration: Calibration
) -> torch.Tensor:
    """Final scores ``[queries, documents]`` (higher is better)."""
    scores = soft
    if question_best is not None:
        if calibration.question_offset is not None:
            scores = torch.maximum(scores, question_best - calibration.question_offset)
        repeat = question_best >= REPEAT_SIMILARITY
        if repeat.any():
            scores = torch.where(repeat, torch.maximum(scores, question_best + 1.0), scores)
    if calibration.hybrid_weight > 0 and lexical is not None:
        alpha = calibration.hybrid_weight
        scores = alpha * zscore(lexical.to(scores)) + (1 - alpha) * zscore(scores)
    return scores


def calibrate(
    soft: torch.Tensor,
    question_best_loo: torch.Tensor | None,
    lexical: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    hybrid_grid: Sequence[float] = HYBRID_GRID,
    offset_grid: Sequence[float | None] = OFFSET_GRID,
    tolerance: float = 0.01,
) -> Calibration:
    """Leave-one-out choice of hybrid weight and question-row offset (see the module docstring).

    ``soft``, ``question_best_loo`` and ``lexical`` are the scores of the held-out questions
    (their own question rows hidden); ``labels`` their documents' rows.
    """
    results: list[tuple[float, float, float | None]] = []
    for alpha in hybrid_grid if lexical is not None else (0.0,):
        for offset in offset_grid if question_best_loo is not None else (None,):
            setting = Calibration(hybrid_weight=alpha, question_offset=offset)
            scores = combine(soft, question_best_loo, lexical, setting)
            recall = float((scores.argmax(dim=1) == labels.to(scores.device)).float().mean())
            results.append((recall, alpha, offset))
    best = max(r for r, _, _ in results)
    near = [r for r in results if r[0] >= best - tolerance]
    # Most use of question rows (smallest offset, None = unused), then the best recall.
    recall, alpha, offset = min(near, key=lambda r: (float("inf") if r[2] is None else r[2], -r[0]))
    return Calibration(hybrid_weight=alpha, question_offset=offset, leave_one_out_recall=recall, pairs=len(labels))
