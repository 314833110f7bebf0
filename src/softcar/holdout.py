"""Held-out feedback: the judge of whether training helped.

Calibrating on questions the head was just trained on makes its soft scores look perfect, so
calibration trusted them (no BM25, no question rows) and training lowered R@1 on everything
nobody had asked about. Instead a share of the *documents* with feedback is kept out of
training altogether: their questions are then exactly what a deployment gets for documents
without feedback, scored by a model that never saw them. Calibration runs on them, and the
trained adapter + head are kept only if they beat the untrained (frozen) model on them, question
by question by more than two standard errors (``TrainConfig.guard_standard_errors``); the
retriever otherwise rolls back, so training can never make things worse than what its own
held-out evidence says the frozen model does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from softcar.scoring import Calibration, convincing_gain
from softcar.training_data import Example


def split_by_document(
    pairs: Sequence[Example], fraction: float, seed: int, min_documents: int = 2
) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: all pairs of a random ``fraction`` of the labelled documents are held out.

    Grouped by document so that held-out questions are about documents training never saw a
    question of. Fewer than ``min_documents`` labelled documents, or ``fraction`` 0: nothing is
    held out. At least one document is held out otherwise, and at least one is trained on.
    """
    documents = sorted({row for _, row in pairs})
    if fraction <= 0 or len(documents) < max(min_documents, 2):
        return list(pairs), []
    count = min(max(1, round(len(documents) * fraction)), len(documents) - 1)
    held = set(random.Random(seed).sample(documents, count))
    return [p for p in pairs if p[1] not in held], [p for p in pairs if p[1] in held]


def keep_trained(
    untrained: Calibration,
    trained: Calibration,
    margin: float = 0.0,
    standard_errors: float = 0.0,
    hits: tuple[Sequence[float], Sequence[float]] | None = None,
) -> bool:
    """Whether training earned its place on the held-out feedback.

    The trained model must do at least as well (plus ``margin``) both in expected R@1 and on
    questions about documents without feedback (``unseen_recall``), and strictly better in one
    of them when ``margin`` is 0: a tie (common with a few dozen held-out pairs) is no evidence
    that training helps, and the untrained model is the one known not to lose to frozen search.
    With ``standard_errors`` > 0 the per-question gain (``hits``: each calibration's expected
    hit per held-out pair, ``softcar.scoring.setting_hits``) must also exceed that many standard
    errors of the paired difference, so that one or two lucky questions of a few dozen do not
    keep a training; a negative ``margin``, which tolerates a loss, skips this test. A
    calibration without estimates (nothing held out) keeps the trained model: there is no
    evidence either way, and training on the documents' own spans is the method's default.
    """
    pairs = ((untrained.expected_recall, trained.expected_recall), (untrained.unseen_recall, trained.unseen_recall))
    known = [(before, after) for before, after in pairs if before is not None and after is not None]
    if len(known) < len(pairs):
        return True
    if not all(after >= before + margin for before, after in known):
        return False
    if standard_errors > 0 and margin >= 0 and (hits is None or not convincing_gain(hits[0], hits[1], standard_errors)):
        return False
    return margin != 0 or any(after > before for before, after in known)
