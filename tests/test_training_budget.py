"""A fit that finishes: an example budget, a cap on full-document examples, a step cap."""

from __future__ import annotations

from softcar import ClassifierRetriever, Document, StepTimer, TrainConfig
from softcar.training_data import span_examples, within_budget

EXAMPLES = [(f"query {i}", i % 7) for i in range(100)]


def test_small_runs_are_unchanged() -> None:
    assert within_budget(EXAMPLES, 3, 1000, 0) == (EXAMPLES, 3)
    assert within_budget(EXAMPLES, 3, None, 0) == (EXAMPLES, 3)


def test_the_budget_cuts_epochs_first_then_examples() -> None:
    examples, epochs = within_budget(EXAMPLES, 4, 250, 0)
    assert (examples, epochs) == (EXAMPLES, 2)
    examples, epochs = within_budget(EXAMPLES, 4, 40, 0)
    assert epochs == 1 and len(examples) == 40 and set(examples) <= set(EXAMPLES)
    assert within_budget(EXAMPLES, 4, 40, 0) == (examples, epochs)  # reproducible
    assert within_budget(EXAMPLES, 4, 40, 1) != (examples, epochs)


def test_full_document_examples_are_capped(corpus: list[Document]) -> None:
    config = TrainConfig(pseudo_queries_per_document=2, max_document_text_examples=2)
    capped = span_examples(corpus, range(len(corpus)), config, 0)
    uncapped = span_examples(
        corpus, range(len(corpus)), config.model_copy(update={"max_document_text_examples": None}), 0
    )
    with_text = 0
    for row, document in enumerate(corpus):
        mine = [text for text, r in capped if r == row]
        assert mine[:2] == [text for text, r in uncapped if r == row][:2]  # the same spans
        assert len(mine) in (2, 3) and (len(mine) == 2 or mine[2] == document.text)
        with_text += len(mine) == 3
    assert with_text == 2 and len(uncapped) == 3 * len(corpus)


def test_fit_sees_at_most_the_budget(tiny_bert: str, corpus: list[Document]) -> None:
    config = TrainConfig(
        epochs=10, batch_size=4, pseudo_queries_per_document=3, show_progress=False, max_train_examples=9
    )
    retriever = ClassifierRetriever(tiny_bert, config=config)
    timer = StepTimer()
    retriever.callbacks.append(timer)
    retriever.fit(corpus)
    assert timer.examples == 9 and len(timer.seconds) == 3


def test_max_steps_caps_a_run(tiny_bert: str, corpus: list[Document]) -> None:
    config = TrainConfig(epochs=3, batch_size=2, pseudo_queries_per_document=2, show_progress=False, max_steps=4)
    retriever = ClassifierRetriever(tiny_bert, config=config)
    timer = StepTimer()
    retriever.callbacks.append(timer)
    retriever.fit(corpus)
    assert len(timer.seconds) == 4
