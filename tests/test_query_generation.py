"""Pluggable question generation: junk, failures and time-outs fall back to spans."""

from __future__ import annotations

import time

import pytest

from softcar import ClassifierRetriever, Document, parse_questions
from softcar.errors import QueryGenerationError
from softcar.query_generation import generate_questions
from tests.conftest import FAST


def test_parse_questions_strips_numbering_and_junk() -> None:
    reply = (
        "1. What is the GIL?\n- why are threads slow in python\n\nok\nQ3: How do I use all cores?\n1. What is the GIL?"
    )
    assert parse_questions(reply) == ["What is the GIL?", "why are threads slow in python", "How do I use all cores?"]


def test_parse_questions_drops_a_small_models_own_answers() -> None:
    # what SmolLM2-135M-Instruct replies for a chatterbot_qa answer
    reply = (
        "Is this surprising in some way?\nQuestion 2: Is this surprising in another way?\n"
        "Answer: The nature of reality is subjective.\nA: it runs inside a computer"
    )
    assert parse_questions(reply) == ["Is this surprising in some way?", "Is this surprising in another way?"]


def test_failures_timeouts_and_junk_are_counted_not_raised() -> None:
    def flaky(text: str) -> list[str]:
        if text == "raise":
            raise RuntimeError("service unavailable")
        if text == "hang":
            time.sleep(5)
        if text == "junk":
            return "not a list"  # type: ignore[return-value]
        if text == "empty":
            return ["", "   "]
        return [f"what about {text}?"]

    report = generate_questions(flaky, ["good", "raise", "hang", "junk", "empty"], timeout=0.5)
    assert report.questions[0] == ["what about good?"]
    assert (report.failed, report.timed_out, report.empty) == (2, 1, 1)


def test_generator_failing_everywhere_is_a_clear_error() -> None:
    def broken(text: str) -> list[str]:
        raise ConnectionError("no LLM here")

    with pytest.raises(QueryGenerationError, match="no usable question for any of 2 documents"):
        generate_questions(broken, ["a", "b"])


def test_fit_uses_round_trip_filtered_generated_questions(tiny_bert: str, corpus: list[Document]) -> None:
    def own_words_and_noise(text: str) -> list[str]:
        # One question built from the document's own words (frozen search leads back to it) and
        # the same off-topic question for every document (it can lead back to one at most).
        return [" ".join(text.split()[:10]), "completely unrelated words about cooking pasta tonight"]

    config = FAST.model_copy(update={"round_trip_top_k": 1})
    retriever = ClassifierRetriever(tiny_bert, config=config)
    retriever.fit(corpus, query_generator=own_words_and_noise)
    assert len(corpus) // 2 <= retriever.generated_questions <= len(corpus) + 1


def test_fit_with_a_generator_that_always_fails_raises(tiny_bert: str, corpus: list[Document]) -> None:
    with pytest.raises(QueryGenerationError):
        ClassifierRetriever(tiny_bert, config=FAST).fit(corpus, query_generator=lambda text: 1 / 0)
