"""Question rows, BM25 fusion and their leave-one-out calibration."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from softcar import ClassifierRetriever, Document, ScoringConfig, TrainConfig
from softcar.errors import CorruptCheckpointError
from softcar.question_rows import QuestionRows
from softcar.scoring import REWORD_DROP, REWORD_LEXICAL_DROP, Calibration, HeldOut, calibrate, combine, reword, zscore
from tests.conftest import FAST
from tests.test_retriever import QUESTIONS, ranking


def test_question_rows_cap_and_duplicates() -> None:
    rows = QuestionRows(dim=2, max_per_document=2)
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    assert rows.add(["a", "a again", "b", "c"], [0, 0, 0, 0], vectors) == 3  # "a again" is a near-duplicate
    assert len(rows) == 2 and set(rows.texts) <= {"a", "b", "c"}
    best = rows.best_per_document(vectors[:1], num_documents=2)
    assert best[0, 1] == float("-inf") and best[0, 0] > 0.5


def test_calibration_refuses_rows_that_steal_other_documents_questions() -> None:
    """Held-out questions whose best question row belongs to *another* document: rows must be off."""
    labels = torch.arange(4)
    soft = torch.eye(4) * 0.6 + 0.1  # the head alone ranks every question right
    stolen = torch.full((4, 4), float("-inf"))
    stolen[torch.arange(4), (labels + 1) % 4] = 0.95  # a similar question of the next document
    chosen = calibrate(HeldOut(soft, stolen, None, labels))  # no document has feedback: coverage 0
    assert chosen.unseen_recall == 1.0
    assert torch.equal(combine(soft, stolen, None, chosen).argmax(1), labels)
    assert not torch.equal(combine(soft, stolen, None, Calibration(question_offset=0.0)).argmax(1), labels)


def test_rows_that_help_rewordings_but_steal_from_unlabelled_documents_stay_off() -> None:
    """90 % coverage: the expected R@1 favours rows (rewordings dominate), but they would cost
    documents without feedback their questions, so they are not used."""
    labels = torch.arange(4)
    soft = torch.eye(4) * 0.3 + 0.3  # right, but by less than any offset protects
    stolen = torch.full((4, 4), float("-inf"))
    stolen[torch.arange(4), (labels + 1) % 4] = 0.95
    seen_soft = torch.full((4, 4), 0.5) + 0.01 * torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    own_rows = torch.full((4, 4), float("-inf"))
    own_rows[torch.arange(4), labels] = 0.9
    chosen = calibrate(HeldOut(soft, stolen, None, labels), HeldOut(seen_soft, own_rows, None, labels), coverage=0.9)
    assert chosen.unseen_recall == 1.0
    assert torch.equal(combine(soft, stolen, None, chosen).argmax(1), labels)


def test_rows_that_steal_in_leave_one_out_are_used_when_every_document_has_feedback() -> None:
    """Full coverage: every new question is about a document with feedback, so the
    leave-one-out floor (which protects documents without feedback) does not apply and the
    rows that find rewordings are used (the main job's chatterbot_qa setting)."""
    n = 8  # all n won: z = √n, past the two standard errors calibration asks for
    labels = torch.arange(n)
    soft = torch.eye(n) * 0.3 + 0.3
    stolen = torch.full((n, n), float("-inf"))
    stolen[torch.arange(n), (labels + 1) % n] = 0.95
    seen_soft = torch.full((n, n), 0.5) + 0.01 * torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    own_rows = torch.full((n, n), float("-inf"))
    own_rows[torch.arange(n), labels] = 0.9
    seen = HeldOut(seen_soft, own_rows, None, labels)
    chosen = calibrate(HeldOut(soft, stolen, None, labels), seen, coverage=1.0)
    assert chosen.question_offset is not None
    assert torch.equal(combine(seen_soft, own_rows, None, chosen).argmax(1), labels)


def test_calibration_learns_the_hybrid_weight() -> None:
    labels = torch.arange(8)
    soft = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))  # uninformative
    lexical = torch.eye(8) * 3.0  # BM25 is right
    assert calibrate(HeldOut(soft, None, lexical, labels)).hybrid_weight > 0
    assert calibrate(HeldOut(lexical, None, soft, labels)).hybrid_weight == 0.0


def test_a_weight_that_wins_one_question_of_thirty_is_not_evidence() -> None:
    """Few pairs: a hybrid weight that beats the prior by one question (z = 1, within the
    standard errors calibration asks for) is noise, so the prior stays; one that wins many questions is taken."""
    n = 30
    labels = torch.arange(n)
    soft = torch.eye(n)  # the soft score alone is right on every question but one
    soft[0] = 0.0
    soft[0, 1] = 1.0
    lexical = torch.eye(n) * 0.01
    lexical[0, 0] = 100.0  # BM25 rescues that one question at any weight above zero
    assert calibrate(HeldOut(soft, None, lexical, labels), prior_hybrid_weight=0.0).hybrid_weight == 0.0
    wrong = torch.roll(torch.eye(n), 1, dims=1)  # the soft score alone is wrong everywhere
    assert calibrate(HeldOut(wrong, None, torch.eye(n), labels), prior_hybrid_weight=0.0).hybrid_weight > 0


def test_two_lucky_questions_need_the_configured_standard_errors_to_move_the_weight() -> None:
    """Two wins and no losses is z = √2: enough for one standard error, not for the default two."""
    n = 30
    labels = torch.arange(n)
    soft = torch.eye(n)
    lexical = torch.eye(n) * 0.01
    for question in (0, 1):  # the soft score misses two questions, BM25 rescues them
        soft[question] = 0.0
        soft[question, question + 1] = 1.0
        lexical[question, question] = 100.0
    held_out = HeldOut(soft, None, lexical, labels)
    assert calibrate(held_out, prior_hybrid_weight=0.0).hybrid_weight == 0.0
    assert calibrate(held_out, prior_hybrid_weight=0.0, standard_errors=1.0).hybrid_weight > 0
    assert ScoringConfig().calibration_standard_errors == 2.0


def test_calibration_uses_rows_when_every_document_has_feedback() -> None:
    """Full coverage: new questions are rewordings of known ones, where rows help."""
    n = 8
    labels = torch.arange(n)
    soft = torch.full((n, n), 0.5) + 0.01 * torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    own_rows = torch.full((n, n), float("-inf"))
    own_rows[torch.arange(n), labels] = 0.9  # a reworded question finds its original
    hidden = torch.full((n, n), float("-inf"))  # leave-one-out: nothing left
    chosen = calibrate(HeldOut(soft, hidden, None, labels), HeldOut(soft, own_rows, None, labels), coverage=1.0)
    assert chosen.question_offset is not None and chosen.expected_recall == 1.0


def test_logsumexp_rewards_a_document_whose_text_and_known_question_both_match() -> None:
    soft = torch.tensor([[0.62, 0.50, 0.40]])
    rows = torch.tensor([[0.62, 0.65, float("-inf")]])  # the third document has no question rows
    by_max = combine(soft, rows, None, Calibration(question_offset=0.0))
    by_lse = combine(soft, rows, None, Calibration(question_offset=0.0, question_temperature=0.1))
    assert int(by_max.argmax()) == 1  # its known question is the closest
    assert int(by_lse.argmax()) == 0  # text and known question both close
    assert bool((by_lse >= by_max).all())
    assert float(by_lse[0, 2]) == pytest.approx(0.40)  # no rows: the soft score, unchanged


def _rows_only_views(n: int, own_similarity: float) -> tuple[HeldOut, HeldOut]:
    """Held-out views where only question rows find documents: the head's scores are noise,
    each simulated rewording meets its own question row at ``own_similarity``, and leave-one-out
    has no row left to find."""
    labels = torch.arange(n)
    soft = torch.full((n, n), 0.5) + 0.01 * torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    own_rows = torch.full((n, n), float("-inf"))
    own_rows[labels, labels] = own_similarity
    hidden = torch.full((n, n), float("-inf"))
    return HeldOut(soft, hidden, None, labels), HeldOut(soft, own_rows, None, labels)


def test_the_temperature_applies_only_when_every_document_has_feedback() -> None:
    views = _rows_only_views(6, 0.9)
    full = calibrate(*views, coverage=1.0, full_coverage_temperature=0.1)
    assert full.question_offset is not None and full.question_temperature == 0.1
    partial = calibrate(*views, coverage=0.5, full_coverage_temperature=0.1)
    assert partial.question_temperature is None
    assert calibrate(*views, coverage=1.0).question_temperature is None


def test_offset_ties_go_to_fewest_rows_with_documents_to_protect_and_to_most_rows_without() -> None:
    """Every offset of the grid answers every simulated rewording: a tie. With documents lacking
    feedback the largest offset wins (protect them); with none, the smallest (2026-12-04)."""
    views = _rows_only_views(6, 0.95)
    assert calibrate(*views, coverage=1.0).question_offset == 0.0
    assert calibrate(*views, coverage=0.5).question_offset == 0.3


def test_at_full_coverage_leave_one_out_does_not_pick_the_hybrid_weight() -> None:
    """Rows find every rewording whatever α; leave-one-out prefers BM25. With every document
    labelled it describes documents that do not exist, so α stays at the prior; with documents
    left unlabelled it decides (python-faq B lost 13 points R@1 to α 0.4 chosen this way)."""
    n = 6
    labels = torch.arange(n)
    wrong = 0.5 * torch.roll(torch.eye(n), 1, dims=1) + 0.45 * torch.roll(torch.eye(n), 2, dims=1)
    own_rows = torch.full((n, n), float("-inf"))
    own_rows[labels, labels] = 0.9
    hidden = torch.full((n, n), float("-inf"))
    unseen = HeldOut(wrong, hidden, torch.eye(n), labels)  # only BM25 finds documents without rows
    seen = HeldOut(wrong, own_rows, torch.zeros(n, n), labels)  # rewordings share no words
    everyone = calibrate(unseen, seen, coverage=1.0, prior_hybrid_weight=0.1)
    assert everyone.hybrid_weight == 0.1 and everyone.question_offset is not None
    half = calibrate(unseen, seen, coverage=0.5, prior_hybrid_weight=0.1)
    assert half.hybrid_weight > 0.1 and half.unseen_recall == 1.0


def test_several_rewordings_of_a_question_count_as_a_share_of_that_question() -> None:
    labels = torch.tensor([0, 1])
    soft = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # copy 1 then copy 2
    view = HeldOut(soft, None, None, labels.repeat(2), copies=2)
    assert view.hits(Calibration()).tolist() == [1.0, 0.5]


def test_the_lexical_side_of_a_simulated_rewording_keeps_fewer_words() -> None:
    """Real rewordings keep about 45 % of the words; the soft side keeps about three quarters."""
    question = "how do i make a python package installable with pip from a local folder"
    rng = random.Random(0)

    def kept(drop: float) -> float:
        return sum(len(reword(question, rng, drop).split()) for _ in range(200)) / 200 / len(question.split())

    assert 0.7 < kept(REWORD_DROP) < 0.8 and 0.4 < kept(REWORD_LEXICAL_DROP) < 0.5


def test_a_replacement_puts_a_drawn_word_where_a_word_is_lost() -> None:
    """Real rewordings are as long as their originals: the lexical side swaps words, not only drops them."""
    question = "how do i make a python package installable with pip from a local folder"
    rng = random.Random(0)
    copies = [reword(question, rng, REWORD_LEXICAL_DROP, lambda r: "zebra") for _ in range(200)]
    assert all(len(copy.split()) == len(question.split()) for copy in copies)
    replaced = sum(copy.split().count("zebra") for copy in copies) / 200 / len(question.split())
    assert 0.5 < replaced < 0.6


def test_zscore_and_combine_without_extras() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(zscore(scores).mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.equal(combine(scores, None, None, Calibration()), scores)


def test_feedback_is_found_at_once_without_training(tiny_bert: str, corpus: list[Document]) -> None:
    retriever = ClassifierRetriever(tiny_bert, config=FAST).fit(corpus)
    question = "which lock stops my threads from running python code in parallel"
    retriever.update([(question, "gil")], epochs=0)
    assert retriever.retrieve(question, k=1)[0].document.id == "gil"


def test_question_rows_and_calibration_survive_save_load(
    tiny_bert: str, corpus: list[Document], tmp_path: Path
) -> None:
    pairs = list(zip(QUESTIONS, [d.id for d in corpus]))
    retriever = ClassifierRetriever(tiny_bert, config=FAST).fit(corpus, queries=pairs)
    retriever.save(tmp_path / "m")
    loaded = ClassifierRetriever.load(tmp_path / "m")
    assert loaded.calibration == retriever.calibration
    assert ranking(loaded) == ranking(retriever)
    (tmp_path / "m" / "questions.jsonl").write_text('{"id": "0", "text": "only one"}\n')
    with pytest.raises(CorruptCheckpointError):
        ClassifierRetriever.load(tmp_path / "m")


def test_fixed_scoring_settings_are_respected(tiny_bert: str, corpus: list[Document]) -> None:
    scoring = ScoringConfig(hybrid_weight=0.3, question_offset=0.1)
    pairs = list(zip(QUESTIONS, [d.id for d in corpus]))
    retriever = ClassifierRetriever(tiny_bert, config=TrainConfig(epochs=0, show_progress=False), scoring=scoring)
    retriever.fit(corpus, queries=pairs)
    assert retriever.calibration.hybrid_weight == 0.3 and retriever.calibration.question_offset == 0.1


def test_stopword_only_query_is_scored(tiny_bert: str, corpus: list[Document]) -> None:
    """BM25 has no terms for "what is it"; fusion must still answer (bm25s raises on no tokens)."""
    retriever = ClassifierRetriever(tiny_bert, config=FAST, scoring=ScoringConfig(hybrid_weight=0.5)).fit(corpus)
    assert len(retriever.retrieve("what is it", k=3)) == 3


def test_calibration_ties_go_to_the_prior_weight_and_fewest_rows() -> None:
    """Every setting gets every held-out question right: no evidence, so keep the prior."""
    labels = torch.arange(3)
    soft = torch.eye(3)
    rows = torch.full((3, 3), float("-inf"))
    chosen = calibrate(HeldOut(soft, rows, torch.eye(3), labels), prior_hybrid_weight=0.2)
    assert chosen.hybrid_weight == 0.2 and chosen.question_offset is None


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_a_fixed_hybrid_weight_is_in_force_before_any_fit(tiny_bert: str, corpus: list[Document], alpha: float) -> None:
    """``hybrid_weight=0`` means no BM25 from the start (it used to fall back to the default)."""
    retriever = ClassifierRetriever(tiny_bert, config=FAST, scoring=ScoringConfig(hybrid_weight=alpha))
    assert retriever.calibration.hybrid_weight == alpha
    vectors = retriever.embed_documents([d.text for d in corpus])
    retriever.add_embedded_documents(corpus, vectors)
    assert retriever.calibration.hybrid_weight == alpha


@pytest.mark.parametrize("declared", [None, 1.0])
def test_calibration_uses_the_declared_feedback_coverage(
    tiny_bert: str, corpus: list[Document], monkeypatch: pytest.MonkeyPatch, declared: float | None
) -> None:
    """Feedback on 2 of the documents: calibration assumes questions spread evenly (2/N) unless
    ``feedback_coverage`` says how many new questions are about documents with feedback."""
    import softcar.retriever

    seen: list[float] = []

    def recording(*args, **kwargs) -> Calibration:  # the real calibration, its coverage noted
        seen.append(args[2])
        return calibrate(*args, **kwargs)

    monkeypatch.setattr(softcar.retriever, "calibrate", recording)
    scoring = ScoringConfig(feedback_coverage=declared)
    retriever = ClassifierRetriever(tiny_bert, config=FAST, scoring=scoring).fit(corpus)
    retriever.update(list(zip(QUESTIONS[:2], [d.id for d in corpus[:2]])), epochs=0)
    assert seen and seen[-1] == (2 / len(corpus) if declared is None else declared)
