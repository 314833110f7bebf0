"""``from_nodes(nodes, llm=...)``: a LlamaIndex LLM writes training questions (a fake LLM)."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.schema import TextNode

from llama_index.retrievers.softcar import ClassifierRetriever, question_generator
from softcar import TrainConfig
from softcar.errors import QueryGenerationError

CONFIG = TrainConfig(epochs=1, batch_size=8, pseudo_queries_per_document=2, round_trip_top_k=50, show_progress=False)


class QuestionLLM(CustomLLM):
    """Replies with two questions naming the first word of the prompt's text (or with junk)."""

    junk: bool = False

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if self.junk:
            return CompletionResponse(text="sure")
        word = prompt.split("Text:\n", 1)[1].split()[0]
        return CompletionResponse(text=f"1. What does {word} mean here?\n2. Explain {word} to me please")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        yield self.complete(prompt)


def test_question_generator_parses_the_reply() -> None:
    assert question_generator(QuestionLLM(), 2)("Tuples are immutable.") == [
        "What does Tuples mean here?",
        "Explain Tuples to me please",
    ]


def test_from_nodes_with_llm(nodes: list[TextNode], tiny_encoder: str) -> None:
    retriever = ClassifierRetriever.from_nodes(nodes, llm=QuestionLLM(), encoder=tiny_encoder, config=CONFIG)
    assert retriever.retriever.generated_questions == 2 * len(nodes)
    assert retriever.retrieve("what does tuples mean")


def test_llm_without_usable_questions_is_a_clear_error(nodes: list[TextNode], tiny_encoder: str) -> None:
    with pytest.raises(QueryGenerationError):
        ClassifierRetriever.from_nodes(nodes, llm=QuestionLLM(junk=True), encoder=tiny_encoder, config=CONFIG)
