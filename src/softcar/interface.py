"""The generic retriever interface that integrations, evaluation and federation depend on.

``ClassifierRetriever`` and the baselines (``InnerProductRetriever``, ``BM25Retriever``) all
implement :class:`Retriever`, so any of them can be swapped in with one argument.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from typing_extensions import Self

from softcar.documents import Document, DocumentLike, ScoredDocument
from softcar.errors import EmptyQueryError, InvalidKError, InvalidQueryError, NotFittedError


@runtime_checkable
class Retriever(Protocol):
    """What every softcar retriever offers."""

    @property
    def documents(self) -> list[Document]: ...

    def fit(self, documents: Iterable[DocumentLike], queries: Iterable[tuple[str, str]] | None = None) -> Self: ...

    def retrieve(self, query: str, k: int = 4) -> list[ScoredDocument]: ...

    def retrieve_batch(self, queries: Sequence[str], k: int = 4) -> list[list[ScoredDocument]]: ...

    def add_documents(self, documents: Iterable[DocumentLike]) -> list[str]: ...

    def save(self, path: str | os.PathLike[str]) -> None: ...

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> Self: ...


def validate_query(query: object) -> str:
    """Return the query if it is a non-blank string, else raise a typed error."""
    if not isinstance(query, str):
        raise InvalidQueryError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise EmptyQueryError("query is empty or whitespace only")
    return query


def validate_queries(queries: object) -> list[str]:
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise InvalidQueryError("queries must be a sequence of str (use retrieve() for one query)")
    return [validate_query(q) for q in queries]


def validate_k(k: object) -> int:
    """``k`` must be an int ≥ 1; values above the corpus size are clipped by the caller."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidKError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise InvalidKError(f"k must be >= 1, got {k}")
    return k


def require_fitted(documents: Sequence[Document], name: str) -> None:
    if not documents:
        raise NotFittedError(f"{name} has no documents: call fit(documents) first")
