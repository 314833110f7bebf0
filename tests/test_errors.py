"""Every bad input raises a typed error that names the problem."""

from __future__ import annotations

import pytest

from softcar import BM25Retriever, ClassifierRetriever, Document, InnerProductRetriever
from softcar.errors import (
    DuplicateDocumentIdError,
    EmptyCorpusError,
    EmptyDocumentError,
    EmptyQueryError,
    InvalidDocumentError,
    InvalidKError,
    InvalidQueryError,
    InvalidTrainingPairError,
    NotFittedError,
    SoftcarError,
    UnknownDocumentError,
)
from tests.conftest import FAST


def test_unfitted_retrieve(tiny_bert: str) -> None:
    with pytest.raises(NotFittedError, match="call fit"):
        ClassifierRetriever(tiny_bert, config=FAST).retrieve("anything")


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_query(fitted: ClassifierRetriever, query: str) -> None:
    with pytest.raises(EmptyQueryError, match="empty"):
        fitted.retrieve(query)
    with pytest.raises(ValueError):
        fitted.retrieve_batch(["ok", query])


@pytest.mark.parametrize("query", [None, 3, b"bytes", ["a"]])
def test_non_string_query(fitted: ClassifierRetriever, query: object) -> None:
    with pytest.raises(InvalidQueryError, match="str"):
        fitted.retrieve(query)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fitted.retrieve(query)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [0, -1, 1.5, "3", True])
def test_bad_k(fitted: ClassifierRetriever, k: object) -> None:
    with pytest.raises(InvalidKError, match="k must"):
        fitted.retrieve("threads", k=k)  # type: ignore[arg-type]


def test_k_larger_than_corpus_returns_all(fitted: ClassifierRetriever) -> None:
    hits = fitted.retrieve("threads", k=100)
    assert sorted(h.document.id for h in hits) == sorted(d.id for d in fitted.documents)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_empty_corpus(tiny_bert: str) -> None:
    with pytest.raises(EmptyCorpusError, match="empty"):
        ClassifierRetriever(tiny_bert, config=FAST).fit([])


def test_duplicate_ids(tiny_bert: str) -> None:
    docs = [Document(id="a", text="one"), Document(id="a", text="two")]
    with pytest.raises(DuplicateDocumentIdError, match="'a'"):
        ClassifierRetriever(tiny_bert, config=FAST).fit(docs)


def test_duplicate_id_on_add(fitted: ClassifierRetriever) -> None:
    with pytest.raises(DuplicateDocumentIdError, match="'gil'"):
        fitted.add_documents([{"id": "gil", "text": "again"}])
    assert len(fitted.documents) == 6  # nothing was added


@pytest.mark.parametrize("text", ["", "  \n"])
def test_empty_document_text(tiny_bert: str, text: str) -> None:
    with pytest.raises(EmptyDocumentError, match="'x'"):
        ClassifierRetriever(tiny_bert, config=FAST).fit([Document(id="ok", text="fine"), Document(id="x", text=text)])


@pytest.mark.parametrize("docs", ["a single string", [1, 2], [{"id": "a"}]])
def test_invalid_documents(tiny_bert: str, docs: object) -> None:
    with pytest.raises(InvalidDocumentError):
        ClassifierRetriever(tiny_bert, config=FAST).fit(docs)  # type: ignore[arg-type]


def test_unknown_doc_id_in_training_pair(tiny_bert: str, corpus: list[Document]) -> None:
    with pytest.raises(UnknownDocumentError, match="'nope'"):
        ClassifierRetriever(tiny_bert, config=FAST).fit(corpus, queries=[("why threads", "nope")])


def test_malformed_training_pairs(fitted: ClassifierRetriever) -> None:
    with pytest.raises(InvalidTrainingPairError):
        fitted.update([("only one",)])  # type: ignore[list-item]
    with pytest.raises(InvalidTrainingPairError):
        fitted.update(("question", "gil"))  # type: ignore[arg-type]
    with pytest.raises(EmptyQueryError):
        fitted.update([(" ", "gil")])


def test_overlong_query_is_truncated(fitted: ClassifierRetriever) -> None:
    hits = fitted.retrieve("thread " * 5000, k=2)
    assert len(hits) == 2


@pytest.mark.parametrize("cls", [BM25Retriever, InnerProductRetriever])
def test_baselines_share_the_errors(cls: type, tiny_bert: str, corpus: list[Document]) -> None:
    retriever = cls(tiny_bert) if cls is InnerProductRetriever else cls()
    with pytest.raises(NotFittedError):
        retriever.retrieve("q")
    retriever.fit(corpus)
    with pytest.raises(EmptyQueryError):
        retriever.retrieve(" ")
    with pytest.raises(InvalidKError):
        retriever.retrieve("q", k=0)
    with pytest.raises(EmptyCorpusError):
        cls().fit([]) if cls is BM25Retriever else cls(tiny_bert).fit([])
    assert len(retriever.retrieve("threads", k=50)) == len(corpus)


def test_errors_are_softcar_errors() -> None:
    for error in (EmptyQueryError, InvalidKError, NotFittedError, InvalidQueryError, UnknownDocumentError):
        assert issubclass(error, SoftcarError)
