"""Any LangChain ``VectorStore`` that searches by vector as the index of a ``softcar.ClassifierRetriever``.

The retriever's head rows and question rows (``softcar.VectorRows``: augmented so that cosine,
inner-product and L2 stores all rank entries by softcar's own score) are pushed into the store;
a query is embedded through the adapter, the store's nearest entries are grouped by their
document id, and those documents are scored exactly in-process (``ClassifierRetriever.rank_documents``,
BM25 fusion off). This is how a deployment that outgrows one machine serves softcar from a
distributed engine: the store searches every row, softcar only scores the few it returns.

LangChain stores compute embeddings from text, so the store must be built with
:class:`SoftcarEmbeddings` as its embedding function: it hands the store softcar's row vectors
while :meth:`SoftcarVectorIndex.push` runs, and embeds search queries through the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict, Field

import softcar
from softcar.errors import VectorSearchUnsupportedError, VectorStoreError


class SoftcarEmbeddings(Embeddings):
    """The embedding function of a store that serves a softcar retriever.

    ``embed_query``: the query through the adapter, augmented (``softcar.VectorRows``).
    ``embed_documents``: only during :meth:`SoftcarVectorIndex.push`, softcar's row vectors for
    exactly the texts being pushed; any other call is a ``VectorStoreError`` (a head row is
    learnt, it cannot be computed from text).
    """

    def __init__(self, retriever: softcar.ClassifierRetriever) -> None:
        self.retriever = retriever
        self._pending: list[softcar.VectorRow] | None = None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        pending = self._pending
        if pending is None:
            raise VectorStoreError(
                "SoftcarEmbeddings embeds documents only while SoftcarVectorIndex.push() runs: "
                "add documents through the softcar retriever, then push again"
            )
        if len(texts) != len(pending) or any(t != row.text for t, row in zip(texts, pending)):
            raise VectorStoreError("the vector store asked for embeddings of other texts than softcar pushed")
        return [row.vector for row in pending]

    def embed_query(self, text: str) -> list[float]:
        return softcar.augment_queries(self.retriever.embed_queries([text]))[0]


class SoftcarVectorIndex:
    """A fitted ``softcar.ClassifierRetriever`` served through a LangChain ``VectorStore``.

    Example:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore
            from langchain_softcar import SoftcarEmbeddings, SoftcarVectorIndex

            store = InMemoryVectorStore(SoftcarEmbeddings(retriever))
            index = SoftcarVectorIndex(retriever, store)
            index.push()                      # head rows + question rows, grouped by document id
            hits = index.search("question", k=4)   # list[softcar.ScoredDocument]
            lc = index.as_retriever(k=4)      # a LangChain retriever over the store

    Push into an empty store / collection, and push again (into a fresh one) after ``update`` or
    ``add_documents``: the rows move when the retriever learns.
    """

    def __init__(self, retriever: softcar.ClassifierRetriever, store: VectorStore, *, batch_size: int = 1000) -> None:
        if not isinstance(store, VectorStore):
            raise VectorStoreError(f"store must be a langchain_core VectorStore, got {type(store).__name__}")
        embeddings = store.embeddings
        if not isinstance(embeddings, SoftcarEmbeddings) or embeddings.retriever is not retriever:
            raise VectorStoreError(
                f"{type(store).__name__} must use SoftcarEmbeddings(retriever) of this retriever as its "
                f"embedding function, not {type(embeddings).__name__}"
            )
        self.retriever = retriever
        self.store = store
        self.embeddings = embeddings
        self.batch_size = batch_size
        self.rows: softcar.VectorRows | None = None

    def push(self) -> list[str]:
        """Write every head row and question row into the store (in batches); returns entry ids."""
        self.rows = softcar.VectorRows(self.retriever)
        entries = self.rows.rows
        ids: list[str] = []
        try:
            for start in range(0, len(entries), self.batch_size):
                batch = entries[start : start + self.batch_size]
                self.embeddings._pending = batch
                ids += self.store.add_texts(
                    [row.text for row in batch],
                    metadatas=[row.metadata for row in batch],
                    ids=[row.id for row in batch],
                )
        finally:
            self.embeddings._pending = None
        return ids

    def search(self, query: str, k: int = 4) -> list[softcar.ScoredDocument]:
        """Top ``k`` documents for ``query`` through the store (see the module docstring)."""
        softcar.validate_query(query)
        k = softcar.validate_k(k)
        rows = self.rows if self.rows is not None else softcar.VectorRows(self.retriever)
        vectors = rows.embed([query])
        try:
            found = self.store.similarity_search_by_vector(rows.query_vectors(vectors)[0], k=rows.fetch_k(k))
        except NotImplementedError as exc:
            raise VectorSearchUnsupportedError(f"{type(self.store).__name__} cannot search by vector") from exc
        candidates = [rows.document_of(doc.id, doc.metadata) for doc in found]
        return rows.rank(vectors, [candidates], k)[0]

    def as_retriever(self, k: int = 4) -> SoftcarVectorStoreRetriever:
        """A LangChain retriever over :meth:`search` (``Document.metadata["score"]``)."""
        return SoftcarVectorStoreRetriever(index=self, k=k)


class SoftcarVectorStoreRetriever(BaseRetriever):
    """LangChain retriever answering through :meth:`SoftcarVectorIndex.search`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any = Field(description="A SoftcarVectorIndex (pushed).")
    k: int = Field(default=4, ge=1)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        hits: Sequence[softcar.ScoredDocument] = self.index.search(query, kwargs.get("k", self.k))
        return [
            Document(id=h.document.id, page_content=h.document.text, metadata={**h.document.metadata, "score": h.score})
            for h in hits
        ]
