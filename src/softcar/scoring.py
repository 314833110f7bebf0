"""How a query's scores are put together, and how that is calibrated on feedback.

``soft``: the head's inner products (adapter-embedded query · document rows). Question rows
raise a document to ``question similarity - offset`` when that is higher. An opt-in alternative
where every document has question rows (full coverage) is ``τ · logsumexp`` of the two
(``ScoringConfig.full_coverage_temperature``): a question that matches both a document's text
and one of its known questions then beats one that matches only one of them. On the frozen
embeddings alone (``benchmarks/softcar_bench/aggregation.py``) that gains 0.9 / 1.9 points of
R@1 on the rewordings with every document labelled (chatterbot_qa / python-faq). With documents
left unlabelled it is never better than the maximum at any offset, and up to 12.5 points worse.
In the calibrated pipeline with BM25 fusion it lost 0.6 points on both sets, so it is off.

With a hybrid weight ``α > 0`` the result is fused with BM25: ``α · z(bm25) + (1 - α) · z(soft)``,
``z`` standardising each query's scores over the corpus so that the two scales are comparable.

A repeat of a remembered question (similarity ≥ ``REPEAT_SIMILARITY``) always returns its
document first: confirmed feedback is honoured before any training or calibration.

Calibration picks ``α`` and the offset on the feedback itself, for the two kinds of new
question a deployment gets. A question about a document nobody has asked about yet is
simulated by leave-one-out: each feedback question scored with its own question row hidden,
so a setting whose rows steal other documents' questions loses here. A rewording of a known
question is simulated by a perturbed copy scored with every row visible: its soft side drops a
quarter of the words and swaps two neighbours (a rewording keeps the meaning, which dropping
more words would destroy), its lexical side keeps only ``1 - REWORD_LEXICAL_DROP`` of them (a
rewording changes the words: the reworded questions of both dev sets keep 44-45 % of their
original's words; scored on the milder soft-side copy, fusion at α 0.5 looked 4 points better
than none on python-faq's simulated rewordings and was 12 points worse on its real ones) and
puts a word drawn from the documents in the place of each word it loses
(``ScoringConfig.calibration_replacement_words``): real rewordings are as long as their
originals or longer (1.5× / 1.2× the words on the two dev sets), and the words they bring match
other documents too. A copy that only lost words overrated BM25: on python-faq's frozen
embeddings it put the best weight at 0.3, the real rewordings at 0.1. Each question is reworded
several times when there are few (``ScoringConfig.calibration_rewordings`` in all): with a
single draw, the setting chosen on chatterbot_qa's 64 held-out pairs varied by 10 points R@1
from one random draw to the next. The
two are weighted by the share of documents that have feedback (questions are assumed to spread
evenly over documents), and near-ties go to the setting that is best for documents without
feedback, if there are any. Question rows must not cost documents without feedback: a row
setting whose leave-one-out R@1 is more than the tolerance below the best setting without
question rows is never chosen, however much it helps rewordings. With most documents labelled
the weighting alone would accept that trade (rewordings dominate the expected R@1), which is
how 90 % feedback made the remaining documents worse than frozen search. The floor protects the
documents without feedback, so it is lifted when they are fewer than the tolerance (every
document has feedback): there is then nobody to protect, and the leave-one-out view only
describes documents that do not exist (the main job at full coverage lost 13 points R@1 to it).
Finally, evidence before change: a setting other than the prior one (the hybrid weight used
before any feedback, question rows off) is only chosen if it beats the prior by more than two
standard errors of the per-question difference (``ScoringConfig.calibration_standard_errors``),
so a few dozen pairs cannot pick a weight that only fits them. One standard error was not
enough: with 10 % feedback on chatterbot_qa, one lucky question plus fractional wins on
simulated rewordings passed it (z 1.3), and α 0.2 from 32 pairs cost 3 points R@1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel

HYBRID_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
REWORD_DROP = 0.25
"""Share of words the soft side of a simulated rewording drops."""
MAX_REWORDINGS_PER_QUESTION = 8
"""Cap on the simulated rewordings of one feedback question (``ScoringConfig.calibration_rewordings``)."""
REWORD_LEXICAL_DROP = 0.55
"""Share of words the lexical (BM25) side of a simulated rewording drops: real rewordings keep
about 45 % of their original's words (chatterbot_qa 44 %, python-faq 45 %)."""
REPEAT_SIMILARITY = 0.98
"""A question this similar to a remembered one is a repeat: its document wins whatever the offset."""
OFFSET_GRID = (None, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


class Calibration(BaseModel):
    """The scoring settings in force; stored in checkpoints."""

    hybrid_weight: float = 0.0
    question_offset: float | None = None
    """``None``: question rows are not used for scoring."""
    question_temperature: float | None = None
    """``τ`` of ``τ · logsumexp(soft, question - offset)``; ``None``: their maximum."""
    expected_recall: float | None = None
    """Estimated R@1 of the chosen setting on new questions (``None``: not calibrated)."""
    unseen_recall: float | None = None
    """Its leave-one-out R@1: questions about documents without feedback."""
    pairs: int = 0


def convincing_gain(before: Sequence[float] | None, after: Sequence[float] | None, standard_errors: float) -> bool:
    """Whether ``after`` beats ``before``, paired question by question, by more than
    ``standard_errors`` standard errors of the difference under "no difference".

    ``sum(d) > z * sqrt(sum(d**2))`` for the per-question differences ``d``: for 0/1 hits,
    w - l > z * sqrt(w + l). Missing or unpaired hits (calibrations on different pairs) are no
    evidence, so no gain.
    """
    if before is None or after is None or len(before) != len(after) or not before:
        return False
    differences = [a - b for a, b in zip(after, before)]
    return sum(differences) > standard_errors * math.sqrt(sum(d * d for d in differences))


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
            rows = question_best - calibration.question_offset
            tau = calibration.question_temperature
            # A document without question rows (-inf) keeps its soft score either way.
            scores = torch.maximum(scores, rows) if tau is None else tau * torch.logaddexp(scores / tau, rows / tau)
        repeat = question_best >= REPEAT_SIMILARITY
        if repeat.any():
            scores = torch.where(repeat, torch.maximum(scores, question_best + 1.0), scores)
    if calibration.hybrid_weight > 0 and lexical is not None:
        alpha = calibration.hybrid_weight
        scores = alpha * zscore(lexical.to(scores)) + (1 - alpha) * zscore(scores)
    return scores


def reword(
    text: str, rng: random.Random, drop: float = REWORD_DROP, replacement: Callable[[random.Random], str] | None = None
) -> str:
    """A cheap stand-in for a user rewording a known question: drop words (or, with
    ``replacement``, put a word it draws in their place), swap two neighbours."""
    words = text.split()
    if replacement is not None:
        kept = [w if rng.random() >= drop else replacement(rng) for w in words]
    else:
        kept = [w for w in words if rng.random() >= drop] or words[:1]
    if len(kept) > 2:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


@dataclass
class HeldOut:
    """Scores of held-out questions for one calibration view: ``soft`` and ``lexical`` are
    ``[questions, documents]``, ``question_best`` the best question row per document."""

    soft: torch.Tensor
    question_best: torch.Tensor | None
    lexical: torch.Tensor | None
    labels: torch.Tensor
    copies: int = 1
    """Rows are ``copies`` perturbed versions of each question, copy after copy."""

    def hits(self, setting: Calibration) -> torch.Tensor:
        """Per question: the share of its copies that ``setting`` ranks first (0/1 for one copy)."""
        scores = combine(self.soft, self.question_best, self.lexical, setting)
        hit = (scores.argmax(dim=1) == self.labels.to(scores.device)).float().cpu()
        return hit.view(self.copies, -1).mean(dim=0)

    def recall(self, setting: Calibration) -> float:
        return float(self.hits(setting).mean())


def setting_hits(
    setting: Calibration, unseen: HeldOut, seen: HeldOut | None, coverage: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per calibration question: ``(expected hit, unseen hit)`` under ``setting``.

    The expected hit is the chance a new question like it is answered, ``c·seen + (1-c)·unseen``
    for coverage ``c`` (see ``calibrate``); without a ``seen`` view both are the unseen hit.
    """
    unseen_hits = unseen.hits(setting)
    seen_hits = seen.hits(setting) if seen is not None else unseen_hits
    return coverage * seen_hits + (1 - coverage) * unseen_hits, unseen_hits


def calibrate(
    unseen: HeldOut,
    seen: HeldOut | None = None,
    coverage: float = 0.0,
    *,
    hybrid_grid: Sequence[float] = HYBRID_GRID,
    offset_grid: Sequence[float | None] = OFFSET_GRID,
    tolerance: float = 0.01,
    prior_hybrid_weight: float = 0.0,
    full_coverage_temperature: float | None = None,
    standard_errors: float = 2.0,
) -> Calibration:
    """Choose hybrid weight and question-row offset (see the module docstring).

    ``unseen``: feedback questions with their own question rows hidden (a question about a document
    nobody asked about). ``seen``: reworded copies of feedback questions with every row visible (a
    rewording of a known question). ``coverage``: the share of documents that have question rows,
    i.e. how often a new question is of the second kind if questions spread evenly over documents.
    The expected R@1 ``coverage·seen + (1-coverage)·unseen`` is maximised over the settings whose
    ``unseen`` R@1 is within ``tolerance`` of the best setting without question rows (unless fewer
    than ``tolerance`` of the documents lack feedback); among those within ``tolerance`` of the
    best, the one with the best ``unseen`` R@1 wins, so documents without feedback keep as much as
    possible (where there are none, this preference is skipped like the floor: it would pick by
    documents that do not exist; there, too, question rows combine with
    ``full_coverage_temperature``). A setting other than the prior (``prior_hybrid_weight``, rows
    off) must beat the prior's expected R@1 by more than ``standard_errors`` standard errors of the
    paired per-question difference to be considered at all. Exact ties (common with a few dozen
    held-out pairs) go to the hybrid weight nearest ``prior_hybrid_weight`` (the one used before
    there is any feedback) and then to the most conservative use of question rows (largest offset,
    rows off best): with no evidence either way, stay where unlabelled documents were. Where every
    document has feedback, that last tie goes the other way, to the fullest use of the rows
    (smallest offset).
    """
    protect = 1 - coverage > tolerance  # documents without feedback exist
    temperature = None if protect else full_coverage_temperature
    scored: dict[tuple[float, float | None], tuple[torch.Tensor, float]] = {}
    for alpha in hybrid_grid if unseen.lexical is not None else (0.0,):
        for offset in offset_grid if unseen.question_best is not None else (None,):
            setting = Calibration(hybrid_weight=alpha, question_offset=offset, question_temperature=temperature)
            expected_hits, unseen_hits = setting_hits(setting, unseen, seen, coverage)
            scored[alpha, offset] = (expected_hits, float(unseen_hits.mean()))
    # Do no harm to documents without feedback: rows may only be used where they keep the
    # leave-one-out R@1 within tolerance of the best setting that does not use them. Where
    # (almost) every document has feedback there are no such documents to protect.
    without_rows = [u for (_, offset), (_, u) in scored.items() if offset is None]
    if without_rows and protect:
        floor = max(without_rows) - tolerance
        scored = {key: value for key, value in scored.items() if key[1] is None or value[1] >= floor}
    # Evidence before change: a setting other than the prior one (the no-feedback hybrid weight,
    # rows off) must beat it by more than ``standard_errors`` standard errors of the paired
    # per-question difference. A few dozen pairs otherwise pick a weight that only fits them.
    alphas = sorted({alpha for alpha, _ in scored})
    prior = (min(alphas, key=lambda a: abs(a - prior_hybrid_weight)), None)
    if prior in scored:
        base = scored[prior][0].tolist()
        scored = {
            key: value
            for key, value in scored.items()
            if key == prior or convincing_gain(base, value[0].tolist(), standard_errors)
        }
    results = [(float(per_question.mean()), u, alpha, offset) for (alpha, offset), (per_question, u) in scored.items()]
    best = max(r[0] for r in results)

    def preference(r: tuple[float, float, float, float | None]) -> tuple[float, float, float]:
        # Ties: with documents to protect, the most conservative use of question rows (largest
        # offset, rows off best). With none, the fullest use (smallest offset): conservatism
        # protects nobody there, and a real rewording is further from its known question than the
        # simulated ones (it keeps about 45 % of the words, the soft-side simulation 75 %), so a
        # tie on the simulation understates how much the rows must be trusted.
        offset = float("inf") if r[3] is None else r[3]
        return r[1] if protect else 0.0, -abs(r[2] - prior_hybrid_weight), offset if protect else -offset

    expected, on_unseen, alpha, offset = max((r for r in results if r[0] >= best - tolerance), key=preference)
    return Calibration(
        hybrid_weight=alpha,
        question_offset=offset,
        question_temperature=None if offset is None else temperature,
        expected_recall=expected,
        unseen_recall=on_unseen,
        pairs=len(unseen.labels),
    )
