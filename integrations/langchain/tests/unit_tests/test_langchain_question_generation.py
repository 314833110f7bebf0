"""``from_documents(docs, llm=chat_model)``: an LLM writes training questions (fake chat models)."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from langchain_softcar import ClassifierRetriever, question_generator
from softcar import TrainConfig
from softcar.errors import QueryGenerationError

CONFIG = TrainConfig(epochs=1, batch_size=8, pseudo_queries_per_document=2, round_trip_top_k=6, show_progress=False)


def _documents(texts: dict[str, str]) -> list[Document]:
    return [Document(id=key, page_content=text) for key, text in texts.items()]


def test_chat_model_questions_are_parsed(texts: dict[str, str]) -> None:
    llm = FakeListChatModel(responses=["1. Why is Python indented?\n2. What groups statements?\n\nthanks"])
    assert question_generator(llm, count=2)("any text") == ["Why is Python indented?", "What groups statements?"]


def test_from_documents_with_llm(texts: dict[str, str], tiny_encoder: str) -> None:
    replies = [f"- What does the text about {key} say?\n- Tell me about {key} in Python" for key in texts]
    llm = FakeListChatModel(responses=replies)
    lc = ClassifierRetriever.from_documents(_documents(texts), llm=llm, encoder=tiny_encoder, config=CONFIG)
    assert lc.retriever.generated_questions == 2 * len(texts)  # top-k = corpus size keeps all
    assert lc.invoke("why indentation")


def test_llm_that_always_fails_is_a_clear_error(texts: dict[str, str], tiny_encoder: str) -> None:
    llm = FakeListChatModel(responses=["ok"])  # no usable question in any reply
    with pytest.raises(QueryGenerationError):
        ClassifierRetriever.from_documents(_documents(texts), llm=llm, encoder=tiny_encoder, config=CONFIG)
