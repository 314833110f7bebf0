"""Training options of issue #7: label smoothing, hard negatives, margin term, query augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from softcar import ClassificationLoss, ClassifierRetriever, Document, TrainConfig
from softcar.augmentation import QueryAugmenter
from softcar.losses import training_loss
from tests.conftest import FAST

SCORES = torch.tensor([[0.9, 0.5, 0.1, -0.2], [0.2, 0.3, 0.8, 0.1]])
LABELS = torch.tensor([0, 2])


def test_defaults_are_plain_cross_entropy() -> None:
    loss = ClassificationLoss(20.0).from_scores(SCORES, LABELS)
    assert torch.allclose(loss, F.cross_entropy(SCORES * 20.0, LABELS))
    assert training_loss(TrainConfig()).augmenter is None


def test_hard_negatives_restrict_the_softmax_to_the_top_confusers() -> None:
    loss = ClassificationLoss(10.0, hard_negatives=1).from_scores(SCORES, LABELS)
    # row 0: true 0.9 vs hardest other 0.5; row 1: true 0.8 vs 0.3
    expected = (math.log1p(math.exp(-4.0)) + math.log1p(math.exp(-5.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_penalises_confidence() -> None:
    plain = ClassificationLoss(20.0).from_scores(SCORES, LABELS)
    assert ClassificationLoss(20.0, label_smoothing=0.2).from_scores(SCORES, LABELS) > plain


def test_margin_term_only_where_the_margin_is_violated() -> None:
    base = ClassificationLoss(20.0).from_scores(SCORES, LABELS)
    wide = ClassificationLoss(20.0, margin=0.45, margin_weight=1.0).from_scores(SCORES, LABELS)
    # margins are 0.4 and 0.5: only row 0 violates 0.45 (by 0.05), mean over 2 rows
    assert (wide - base).item() == pytest.approx(0.025, abs=1e-6)
    narrow = ClassificationLoss(20.0, margin=0.3, margin_weight=1.0).from_scores(SCORES, LABELS)
    assert torch.allclose(narrow, base)


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[101, 5, 6, 7, 8, 102], [101, 9, 10, 102, 0, 0]])
    mask = (ids != 0).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}


def test_token_dropout_keeps_first_last_and_one_more() -> None:
    batch = _batch()
    out = QueryAugmenter(token_dropout=0.5, seed=0)(batch)
    assert torch.equal(out["input_ids"], batch["input_ids"])
    mask = out["attention_mask"]
    assert (mask[:, 0] == 1).all() and mask[0, 5] == 1 and mask[1, 3] == 1  # CLS and SEP stay
    assert (mask.sum(dim=1) >= 3).all()
    assert (out["attention_mask"] <= batch["attention_mask"]).all()  # padding stays padding
    assert out["attention_mask"].sum() < batch["attention_mask"].sum()
    assert torch.equal(batch["attention_mask"], (batch["input_ids"] != 0).long())  # input untouched


def test_word_swap_permutes_real_tokens_only() -> None:
    batch = _batch()
    out = QueryAugmenter(swap=0.9, seed=1)(batch)
    assert not torch.equal(out["input_ids"], batch["input_ids"])
    for new, old, mask in zip(out["input_ids"], batch["input_ids"], batch["attention_mask"]):
        assert new[0] == old[0] and sorted(new.tolist()) == sorted(old.tolist())
        assert torch.equal(new[mask == 0], old[mask == 0])
    again = QueryAugmenter(swap=0.9, seed=1)(batch)
    assert torch.equal(again["input_ids"], out["input_ids"])  # seeded


def test_bad_probability_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        QueryAugmenter(token_dropout=1.5)


def test_fit_with_every_option_on(tiny_bert: str, corpus: list[Document]) -> None:
    options = {
        "label_smoothing": 0.1,
        "hard_negatives": 2,
        "margin_weight": 1.0,
        "token_dropout": 0.1,
        "word_swap": 0.1,
    }
    retriever = ClassifierRetriever(tiny_bert, config=FAST.model_copy(update=options)).fit(corpus)
    weights = retriever.trainable_state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values())
    untrained = ClassifierRetriever(tiny_bert, config=FAST.model_copy(update={"epochs": 0})).fit(corpus)
    assert not torch.allclose(weights["head.weight"], untrained.trainable_state_dict()["head.weight"])
