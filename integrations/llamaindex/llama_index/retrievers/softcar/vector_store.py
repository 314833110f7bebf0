"""Any LlamaIndex vector store that searches by vector as the index of a ``softcar.ClassifierRetriever``.

The retriever's head rows and question rows (``softcar.VectorRows``: augmented so that cosine,
inner-product and L2 stores all rank entries by softcar's own score) are added as ``TextNode``
objects carrying their own embeddings; a query is embedded through the adapter and sent as
``VectorStoreQuery(query_embedding=...)``; the entries found are grouped by document id (from
their metadata, or their id for stores that keep no text, like ``SimpleVectorStore``) and those
documents are scored exactly in-process (``ClassifierRetriever.rank_documents``, BM25 fusion off).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQuery

import softcar
from softcar.errors import VectorSearchUnsupportedError, VectorStoreError


class SoftcarVectorIndex:
    """A fitted ``softcar.ClassifierRetriever`` served through a LlamaIndex vector store.

    Example:
        .. code-block:: python

            from llama_index.core.vector_stores import SimpleVectorStore
            from llama_index.retrievers.softcar import SoftcarVectorIndex

            index = SoftcarVectorIndex(retriever, SimpleVectorStore())
            index.push()                        # head rows + question rows, grouped by document id
            hits = index.search("question", k=4)  # list[softcar.ScoredDocument]
            nodes = index.as_retriever(k=4).retrieve("question")

    Push into an empty store, and again (into a fresh one) after ``update`` / ``add_documents``.
    """

    def __init__(self, retriever: softcar.ClassifierRetriever, store: Any, *, batch_size: int = 1000) -> None:
        if not isinstance(store, BasePydanticVectorStore):
            raise VectorStoreError(
                f"store must be a LlamaIndex vector store (BasePydanticVectorStore), got {type(store).__name__}"
            )
        self.retriever = retriever
        self.store = store
        self.batch_size = batch_size
        self.rows: softcar.VectorRows | None = None

    def push(self) -> list[str]:
        """Add every head row and question row to the store as nodes with embeddings; returns ids."""
        self.rows = softcar.VectorRows(self.retriever)
        ids: list[str] = []
        entries = self.rows.rows
        for start in range(0, len(entries), self.batch_size):
            nodes = [
                TextNode(id_=row.id, text=row.text, embedding=row.vector, metadata=row.metadata)
                for row in entries[start : start + self.batch_size]
            ]
            ids += self.store.add(nodes)
        return ids

    def search(self, query: str, k: int = 4) -> list[softcar.ScoredDocument]:
        """Top ``k`` documents for ``query`` through the store (see the module docstring)."""
        softcar.validate_query(query)
        k = softcar.validate_k(k)
        rows = self.rows if self.rows is not None else softcar.VectorRows(self.retriever)
        vectors = rows.embed([query])
        request = VectorStoreQuery(query_embedding=rows.query_vectors(vectors)[0], similarity_top_k=rows.fetch_k(k))
        try:
            result = self.store.query(request)
        except NotImplementedError as exc:
            raise VectorSearchUnsupportedError(f"{type(self.store).__name__} cannot search by vector") from exc
        if result.nodes:
            candidates = [rows.document_of(node.node_id, node.metadata) for node in result.nodes]
        elif result.ids is not None:
            candidates = [rows.document_of(entry) for entry in result.ids]
        else:
            raise VectorSearchUnsupportedError(f"{type(self.store).__name__} returned neither nodes nor ids")
        return rows.rank(vectors, [candidates], k)[0]

    def as_retriever(self, k: int = 4) -> SoftcarVectorStoreRetriever:
        """A LlamaIndex retriever over :meth:`search`."""
        return SoftcarVectorStoreRetriever(self, k)


class SoftcarVectorStoreRetriever(BaseRetriever):
    """LlamaIndex retriever answering through :meth:`SoftcarVectorIndex.search`; node ids are
    softcar document ids."""

    def __init__(self, index: SoftcarVectorIndex, k: int = 4) -> None:
        super().__init__()
        self.index = index
        self.k = softcar.validate_k(k)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.index.search(query_bundle.query_str, self.k)
        return [
            NodeWithScore(
                node=TextNode(id_=h.document.id, text=h.document.text, metadata=dict(h.document.metadata)),
                score=h.score,
            )
            for h in hits
        ]
