"""LlamaIndex retriever over any softcar retriever (a fitted ``softcar.ClassifierRetriever`` by default).

Thin by design: LlamaIndex nodes and queries are converted to the core's ``softcar.Retriever``
protocol and results back to ``NodeWithScore``. Ranking, validation, training and persistence
live in the core, so the baselines (``softcar.InnerProductRetriever``, ``softcar.BM25Retriever``)
can be wrapped as well.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.ingestion import run_transformations
from llama_index.core.schema import (
    BaseNode,
    IndexNode,
    MetadataMode,
    NodeWithScore,
    QueryBundle,
    TextNode,
    TransformComponent,
)
from typing_extensions import Self

import softcar
from llama_index.retrievers.softcar.dataset import finetune_dataset_parts, is_finetune_dataset, training_pairs
from softcar import validate_k

FeedbackDoc = str | BaseNode | NodeWithScore


class ClassifierRetriever(BaseRetriever):
    """LlamaIndex retriever backed by a softcar retriever.

    Each hit becomes ``NodeWithScore(node=TextNode(id_=doc id, text=..., metadata=...), score=...)``,
    so node ids are the softcar document ids (what evaluation datasets and feedback refer to).

    Example:
        .. code-block:: python

            from llama_index.retrievers.softcar import ClassifierRetriever

            li = ClassifierRetriever.from_nodes(nodes, similarity_top_k=4)
            engine = RetrieverQueryEngine.from_args(li, llm=llm)
            li.update([("question", "node-id")])   # fine-tune from feedback
            li.persist("saved-dir")
    """

    def __init__(
        self,
        retriever: Any,
        similarity_top_k: int = 4,
        *,
        callback_manager: CallbackManager | None = None,
        object_map: dict | None = None,
        objects: list[IndexNode] | None = None,
        verbose: bool = False,
    ) -> None:
        # Fail at construction, not at the first query inside a query engine.
        if not isinstance(retriever, softcar.Retriever):
            raise TypeError(
                f"retriever must implement softcar.Retriever (fit/retrieve/retrieve_batch/...), got {type(retriever).__name__}"
            )
        if not retriever.documents:
            raise ValueError("retriever has no documents: fit it first, or use ClassifierRetriever.from_nodes(...)")
        self._retriever = retriever
        self.similarity_top_k = similarity_top_k
        super().__init__(callback_manager=callback_manager, object_map=object_map, objects=objects, verbose=verbose)

    @property
    def retriever(self) -> Any:
        """The wrapped softcar retriever."""
        return self._retriever

    @property
    def similarity_top_k(self) -> int:
        return self._similarity_top_k

    @similarity_top_k.setter
    def similarity_top_k(self, value: int) -> None:
        # softcar.errors.InvalidKError (a ValueError) for 0, negatives and non-ints.
        self._similarity_top_k = validate_k(value)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_nodes(
        cls,
        nodes: Sequence[BaseNode],
        similarity_top_k: int = 4,
        *,
        retriever: Any = None,
        queries: Any = None,
        callback_manager: CallbackManager | None = None,
        **retriever_kwargs: Any,
    ) -> Self:
        """Fit a softcar retriever on ``nodes`` (node ids become document ids) and wrap it.

        Args:
            nodes: ``TextNode`` s (or any ``BaseNode``); their text (without metadata) is indexed.
            similarity_top_k: default number of results.
            retriever: an unfitted softcar retriever to fit (e.g. ``softcar.BM25Retriever()``);
                default: ``softcar.ClassifierRetriever(**retriever_kwargs)``.
            queries: optional labelled training data: ``(question, node_id)`` pairs or an
                ``EmbeddingQAFinetuneDataset`` (object, dict or JSON path) over these nodes.
            **retriever_kwargs: ``softcar.ClassifierRetriever`` arguments (``encoder``,
                ``adapter``, ``config=softcar.TrainConfig(...)``, ...).
        """
        records = [
            {"id": node.node_id, "text": node.get_content(metadata_mode=MetadataMode.NONE), "metadata": dict(node.metadata)}
            for node in nodes
        ]
        if retriever is None:
            retriever = softcar.ClassifierRetriever(**retriever_kwargs)
        elif retriever_kwargs:
            raise TypeError(f"unexpected arguments with an explicit retriever: {sorted(retriever_kwargs)}")
        pairs = training_pairs(queries) if is_finetune_dataset(queries) else queries
        retriever.fit(records, queries=pairs)
        return cls(retriever, similarity_top_k, callback_manager=callback_manager)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[BaseNode],
        similarity_top_k: int = 4,
        *,
        transformations: list[TransformComponent] | None = None,
        **kwargs: Any,
    ) -> Self:
        """Fit on LlamaIndex ``Document`` s.

        Without ``transformations`` every document is one retrievable unit (its ``doc_id`` is
        the id): a classifier over documents. Pass e.g. ``[SentenceSplitter()]`` to chunk them
        into nodes first, as ``VectorStoreIndex.from_documents`` does. ``kwargs`` go to
        :meth:`from_nodes`.
        """
        nodes = run_transformations(list(documents), transformations) if transformations else list(documents)
        return cls.from_nodes(nodes, similarity_top_k, **kwargs)

    @classmethod
    def from_finetune_dataset(
        cls,
        dataset: Any,
        similarity_top_k: int = 4,
        *,
        use_queries: bool = True,
        **kwargs: Any,
    ) -> Self:
        """Fit on an ``EmbeddingQAFinetuneDataset`` (object, dict or the JSON its ``save_json`` writes).

        Its ``corpus`` becomes the documents and ``queries`` + ``relevant_docs`` the labelled
        pairs (``use_queries=False`` trains on the corpus alone, e.g. to evaluate on the queries).
        ``kwargs`` go to :meth:`from_nodes`.
        """
        corpus, _, _ = finetune_dataset_parts(dataset)
        nodes = [TextNode(id_=str(doc_id), text=text) for doc_id, text in corpus.items()]
        return cls.from_nodes(nodes, similarity_top_k, queries=dataset if use_queries else None, **kwargs)

    @classmethod
    def from_persist_dir(cls, persist_dir: str | os.PathLike[str], similarity_top_k: int = 4, **load_kwargs: Any) -> Self:
        """Load any softcar checkpoint written by :meth:`persist` (or ``softcar fit``)."""
        return cls(softcar.load_retriever(persist_dir, **load_kwargs), similarity_top_k)

    def persist(self, persist_dir: str | os.PathLike[str]) -> None:
        """Save the wrapped retriever atomically (safetensors + JSON)."""
        self._retriever.save(persist_dir)

    # ------------------------------------------------------------------ management
    def add_nodes(self, nodes: Sequence[BaseNode]) -> list[str]:
        """Add nodes to the store (softcar gives them head rows without retraining); returns ids."""
        return self._retriever.add_documents(
            [{"id": n.node_id, "text": n.get_content(metadata_mode=MetadataMode.NONE), "metadata": dict(n.metadata)} for n in nodes]
        )

    def update(self, feedback: Iterable[tuple[str, FeedbackDoc]], **kwargs: Any) -> Any:
        """Fine-tune from ``(question, node)`` feedback (node id, node or ``NodeWithScore``).

        Only retrievers that learn (``softcar.ClassifierRetriever``) support it; ``kwargs`` go to
        their ``update`` (e.g. ``epochs=``). Returns the core's result (losses per epoch).
        """
        if not callable(getattr(self._retriever, "update", None)):
            raise NotImplementedError(f"{type(self._retriever).__name__} does not learn from feedback")
        return self._retriever.update(softcar.normalize_pairs(feedback, doc_id=_node_id), **kwargs)

    async def aupdate(self, feedback: Iterable[tuple[str, FeedbackDoc]], **kwargs: Any) -> Any:
        """:meth:`update` in a worker thread so the event loop keeps serving queries."""
        pairs = softcar.normalize_pairs(feedback, doc_id=_node_id)
        return await asyncio.to_thread(self.update, pairs, **kwargs)

    # ------------------------------------------------------------------ retrieval
    @staticmethod
    def _to_nodes(hits: Sequence[softcar.ScoredDocument]) -> list[NodeWithScore]:
        return [
            NodeWithScore(
                node=TextNode(id_=hit.document.id, text=hit.document.text, metadata=dict(hit.document.metadata)),
                score=hit.score,
            )
            for hit in hits
        ]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._to_nodes(self._retriever.retrieve(query_bundle.query_str, k=self._similarity_top_k))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # The core is blocking (torch); a worker thread keeps the event loop responsive.
        hits = await asyncio.to_thread(self._retriever.retrieve, query_bundle.query_str, k=self._similarity_top_k)
        return self._to_nodes(hits)

    def retrieve_batch(self, queries: Sequence[str]) -> list[list[NodeWithScore]]:
        """Many queries in one core ``retrieve_batch`` call (embedded together; no callbacks)."""
        return [self._to_nodes(hits) for hits in self._retriever.retrieve_batch(list(queries), k=self._similarity_top_k)]

    async def aretrieve_batch(self, queries: Sequence[str]) -> list[list[NodeWithScore]]:
        return await asyncio.to_thread(self.retrieve_batch, queries)


def _node_id(doc: Any) -> Any:
    """The softcar id of a feedback node; other values go to the core's pair validation."""
    if isinstance(doc, NodeWithScore):
        doc = doc.node
    return doc.node_id if isinstance(doc, BaseNode) else doc
