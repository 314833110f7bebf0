"""Held-out feedback: calibration on pairs never trained on, and the trained-vs-untrained guard."""

from __future__ import annotations

import pytest
import torch

from softcar import ClassifierRetriever, Document, ScoringConfig
from softcar.holdout import keep_trained, split_by_document
from softcar.scoring import Calibration, convincing_gain
from tests.conftest import FAST
from tests.test_retriever import QUESTIONS

PAIRS = [(q, i) for i, q in enumerate(QUESTIONS)] + [(q + " again", i) for i, q in enumerate(QUESTIONS)]


def test_split_holds_out_whole_documents() -> None:
    train, held = split_by_document(PAIRS, 0.5, seed=0)
    assert len(train) + len(held) == len(PAIRS)
    assert {row for _, row in train}.isdisjoint({row for _, row in held})
    assert len({row for _, row in held}) == 3  # half of the six documents, both questions each
    assert split_by_document(PAIRS, 0.5, seed=0) == (train, held)  # seeded


@pytest.mark.parametrize(
    ("pairs", "fraction", "held_documents"),
    [(PAIRS, 0.0, 0), (PAIRS[:1] + PAIRS[6:7], 0.9, 0), (PAIRS, 0.01, 1), (PAIRS, 0.99, 5)],
)
def test_split_edge_cases(pairs: list[tuple[str, int]], fraction: float, held_documents: int) -> None:
    """No split without two labelled documents; otherwise at least one document on each side."""
    train, held = split_by_document(pairs, fraction, seed=0)
    assert len({row for _, row in held}) == held_documents
    assert train or not pairs


def test_keep_trained_needs_both_estimates() -> None:
    before = Calibration(expected_recall=0.8, unseen_recall=0.7)
    assert not keep_trained(before, Calibration(expected_recall=0.8, unseen_recall=0.7))  # a tie is no evidence
    assert keep_trained(before, Calibration(expected_recall=0.8, unseen_recall=0.75))
    assert keep_trained(before, Calibration(expected_recall=0.8, unseen_recall=0.7), margin=-0.01)
    assert not keep_trained(before, Calibration(expected_recall=0.9, unseen_recall=0.6))  # unseen lost
    assert not keep_trained(before, Calibration(expected_recall=0.9, unseen_recall=0.8), margin=0.2)
    assert keep_trained(Calibration(), Calibration(expected_recall=0.1, unseen_recall=0.1))  # nothing to judge


def test_convincing_gain_is_a_paired_sign_test() -> None:
    assert convincing_gain([0, 0, 0], [1, 1, 0], 1.0)  # 2 won, 0 lost: 2 > sqrt(2)
    assert not convincing_gain([0, 0], [1, 0], 1.0)  # 1 won: 1 > sqrt(1) fails
    assert not convincing_gain([0, 1, 0, 1], [1, 0, 1, 0], 1.0)  # as many lost as won
    assert not convincing_gain([0, 0, 0], [1, 1, 0], 2.0)  # 2 > 2 * sqrt(2) fails
    assert convincing_gain([0.0] * 5, [1.0] * 5, 2.0)  # 5 > 2 * sqrt(5)
    assert not convincing_gain(None, [1.0], 1.0) and not convincing_gain([0.0], [1.0, 1.0], 1.0)  # unpaired


def test_keep_trained_with_standard_errors_needs_a_per_question_gain() -> None:
    """Means that say "better" are not enough when one question of many makes the difference."""
    before = Calibration(expected_recall=0.5, unseen_recall=0.5)
    hits_before = [1.0, 0.0] * 10
    one_lucky = Calibration(expected_recall=0.55, unseen_recall=0.5)
    lucky_hits = [1.0] * 11 + [0.0] * 9  # 5 won, 4 lost
    assert keep_trained(before, one_lucky, hits=(hits_before, lucky_hits))
    assert not keep_trained(before, one_lucky, standard_errors=1.0, hits=(hits_before, lucky_hits))
    clear = Calibration(expected_recall=0.8, unseen_recall=0.6)
    clear_hits = [1.0] * 16 + [0.0] * 4  # 8 won, 2 lost: 6 > sqrt(10)
    assert keep_trained(before, clear, standard_errors=1.0, hits=(hits_before, clear_hits))
    assert not keep_trained(before, clear, standard_errors=1.0)  # no paired evidence


def test_guard_standard_errors_judges_the_held_out_pairs(tiny_bert: str, corpus: list[Document]) -> None:
    """Ten standard errors cannot be reached on six held-out pairs: the fit rolls back, unless a
    negative margin says a loss is tolerated."""
    config = FAST.model_copy(update={"holdout_fraction": 0.5, "guard_margin": 0.0, "guard_standard_errors": 10.0})
    strict = ClassifierRetriever(tiny_bert, config=config).fit(corpus, queries=_pairs(corpus))
    assert strict.training_kept is False
    assert len(strict.calibration_hits) == strict.calibration.pairs == len(PAIRS)  # rolled back: all pairs
    lenient = ClassifierRetriever(tiny_bert, config=config.model_copy(update={"guard_margin": -1.0}))
    assert lenient.fit(corpus, queries=_pairs(corpus)).training_kept is True


def _pairs(corpus: list[Document]) -> list[tuple[str, str]]:
    return [(q, corpus[i].id) for q, i in PAIRS]


def test_guard_rolls_back_to_the_untrained_model(tiny_bert: str, corpus: list[Document]) -> None:
    """A margin no training can reach: fit must end exactly where epochs=0 starts."""
    strict = FAST.model_copy(update={"holdout_fraction": 0.5, "guard_margin": 1.0})
    guarded = ClassifierRetriever(tiny_bert, config=strict).fit(corpus, queries=_pairs(corpus))
    untrained = ClassifierRetriever(tiny_bert, config=strict.model_copy(update={"epochs": 0}))
    untrained.fit(corpus, queries=_pairs(corpus))
    assert guarded.training_kept is False
    for key, tensor in untrained.trainable_state_dict().items():
        assert torch.allclose(guarded.trainable_state_dict()[key], tensor, atol=1e-6), key
    assert guarded.calibration == untrained.calibration
    assert guarded.retrieve(QUESTIONS[4], k=1)[0].document.id == "gil"  # its question row


def test_guard_keeps_training_that_does_not_lose(tiny_bert: str, corpus: list[Document]) -> None:
    lenient = FAST.model_copy(update={"holdout_fraction": 0.5, "guard_margin": -1.0})
    kept = ClassifierRetriever(tiny_bert, config=lenient).fit(corpus, queries=_pairs(corpus))
    frozen = ClassifierRetriever(tiny_bert, config=lenient.model_copy(update={"epochs": 0}))
    frozen.fit(corpus, queries=_pairs(corpus))
    assert kept.training_kept is True
    assert not torch.allclose(kept.trainable_state_dict()["head.weight"], frozen.trainable_state_dict()["head.weight"])
    # Calibrated on the three held-out documents' six questions, not on the trained ones.
    assert kept.calibration.pairs == 6


def test_without_holdout_training_is_unjudged(tiny_bert: str, corpus: list[Document]) -> None:
    old = ClassifierRetriever(tiny_bert, config=FAST.model_copy(update={"holdout_fraction": 0.0}))
    old.fit(corpus, queries=_pairs(corpus))
    assert old.training_kept is None and old.calibration.pairs == len(PAIRS)


def test_guarded_update_rolls_back_but_keeps_the_question_row(tiny_bert: str, corpus: list[Document]) -> None:
    strict = FAST.model_copy(update={"holdout_fraction": 0.5, "guard_margin": 1.0, "update_epochs": 1})
    retriever = ClassifierRetriever(tiny_bert, config=strict).fit(corpus, queries=_pairs(corpus)[:3])
    before = retriever.trainable_state_dict()
    question = "how do several threads share one interpreter"
    assert retriever.update([(question, "gil")])  # it trained (losses returned) ...
    assert retriever.training_kept is False  # ... and rolled back
    assert all(torch.equal(before[k], v) for k, v in retriever.trainable_state_dict().items())
    assert retriever.retrieve(question, k=1)[0].document.id == "gil"


def test_rescore_switches_components_without_retraining(tiny_bert: str, corpus: list[Document]) -> None:
    retriever = ClassifierRetriever(tiny_bert, config=FAST).fit(corpus, queries=_pairs(corpus))
    weights = retriever.trainable_state_dict()
    assert retriever.rescore(ScoringConfig(hybrid_weight=0.0)).hybrid_weight == 0.0
    off = retriever.rescore(ScoringConfig(hybrid_weight=0.3, question_rows=False))
    assert off.question_offset is None and off.hybrid_weight == 0.3
    assert retriever.config.scoring.question_rows is False
    assert all(torch.equal(weights[k], v) for k, v in retriever.trainable_state_dict().items())


def test_update_epochs_zero_in_the_config_adds_rows_without_training(tiny_bert: str, corpus: list[Document]) -> None:
    retriever = ClassifierRetriever(tiny_bert, config=FAST.model_copy(update={"update_epochs": 0})).fit(corpus)
    before = {k: v.clone() for k, v in retriever.trainable_state_dict().items()}
    question = "which lock keeps threads from running bytecode together"
    assert retriever.update([(question, "gil")]) == []  # no epoch ran
    assert all(torch.equal(before[k], v) for k, v in retriever.trainable_state_dict().items())
    assert retriever.retrieve(question, k=1)[0].document.id == "gil"
