"""The generic retriever interface that integrations, evaluation and federation depend on.

``ClassifierRetriever`` and the baselines (``InnerProductRetriever``, ``BM25Retriever``) all
implement :class:`Retriever`, so any of them can be swapped in with one argument.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from typing_extensions import Self

from softcar.documents import Document, DocumentLike, ScoredDocument


@runtime_checkable
class Retriever(Protocol):
    """What every softcar retriever instance offers.

    Loading is a class-level constructor and not part of the instance protocol:
    ``softcar.load_retriever(path)`` loads any checkpoint, ``SomeRetriever.load(path)`` one kind.
    """

    @property
    def documents(self) -> list[Document]: ...

    def fit(self, documents: Iterable[DocumentLike], queries: Iterable[tuple[str, str]] | None = None) -> Self: ...

    def retrieve(self, query: str, k: int = 4) -> list[ScoredDocument]: ...

    def retrieve_batch(self, queries: Sequence[str], k: int = 4) -> list[list[ScoredDocument]]: ...

    def add_documents(self, documents: Iterable[DocumentLike]) -> list[str]: ...

    def save(self, path: str | os.PathLike[str]) -> None: ...
