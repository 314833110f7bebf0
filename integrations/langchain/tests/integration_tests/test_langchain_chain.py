"""The retriever inside real LCEL chains: prompt | fake LLM | parser, all from langchain-core."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel, ParrotFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel, RunnablePassthrough

from langchain_softcar import ClassifierRetriever
from softcar import ClassifierRetriever as CoreRetriever
from softcar import TrainConfig

PROMPT = ChatPromptTemplate.from_messages(
    [("human", "Answer from the context.\nContext:\n{context}\n\nQuestion: {question}")]
)


def format_docs(docs: list[Document]) -> str:
    return "\n".join(f"[{d.id}] {d.page_content}" for d in docs)


def rag_chain(retriever: ClassifierRetriever, llm: Any) -> Any:
    """The usual RAG recipe; the parrot LLM echoes the prompt so we can see what reached it."""
    return {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | llm | StrOutputParser()


def test_rag_chain_puts_retrieved_documents_into_the_prompt(shared_core: CoreRetriever) -> None:
    retriever = ClassifierRetriever(retriever=shared_core, k=2)
    question = "why can't my threads run Python code in parallel?"
    answer = rag_chain(retriever, ParrotFakeChatModel()).invoke(question)
    expected = retriever.invoke(question)
    assert isinstance(answer, str)
    assert f"Question: {question}" in answer
    for doc in expected:
        assert f"[{doc.id}] {doc.page_content}" in answer
    assert answer.count("[") == 2  # exactly k documents reached the prompt


async def test_rag_chain_async_and_batched(shared_core: CoreRetriever) -> None:
    retriever = ClassifierRetriever(retriever=shared_core, k=1)
    chain = rag_chain(retriever, ParrotFakeChatModel())
    questions = ["floating point decimal fractions", "immutable strings as dictionary keys"]
    answers = await chain.abatch(questions)
    for question, answer in zip(questions, answers, strict=True):
        top = retriever.invoke(question)[0]
        assert f"[{top.id}]" in answer and question in answer
    assert await chain.ainvoke(questions[0]) == answers[0]
    assert chain.batch(questions) == answers


def test_chain_returns_answer_with_sources_and_feeds_back(fresh_core: CoreRetriever) -> None:
    """Answer + sources, then fine-tune from what the user accepted (the feedback hook)."""
    retriever = ClassifierRetriever(retriever=fresh_core, k=2)
    llm = FakeListChatModel(responses=["Use multiprocessing."])
    chain = RunnableParallel(
        answer={"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | llm
        | StrOutputParser(),
        sources=retriever,
    )
    question = "my CPU-bound workers are slow in parallel"
    out = chain.invoke(question)
    assert out["answer"] == "Use multiprocessing."
    assert [d.id for d in out["sources"]] == [d.id for d in retriever.invoke(question)]
    retriever.update([(question, out["sources"][-1])] * 4, epochs=10)  # the user preferred the 2nd source
    target = out["sources"][-1].id
    assert chain.invoke(question)["sources"][0].id == target


@pytest.mark.slow
def test_packaged_minilm_in_a_chain_finds_the_right_answer() -> None:
    """End to end on the real packaged all-MiniLM-L6-v2 (no tiny model)."""
    texts = {
        "gil": "The global interpreter lock (GIL) lets only one thread run Python bytecode at a time; "
        "use multiprocessing for CPU-bound work.",
        "float": "Decimal fractions such as 0.1 have no exact binary floating-point representation, "
        "so 0.1 + 0.2 != 0.3.",
        "venv": "A virtual environment is a folder with its own interpreter and site-packages: python -m venv .venv.",
        "immutable": "Strings and tuples are immutable, so they are hashable and can be dictionary keys.",
    }
    retriever = ClassifierRetriever.from_texts(
        list(texts.values()), ids=list(texts), k=1, config=TrainConfig(epochs=2, show_progress=False)
    )
    chain = rag_chain(retriever, ParrotFakeChatModel())
    assert "[float]" in chain.invoke("why is 0.1 + 0.2 not equal to 0.3?")
    assert "[venv]" in chain.invoke("how do I isolate package installs per project?")
