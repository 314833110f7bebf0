"""LlamaIndex retriever over any softcar retriever (a fitted ``softcar.ClassifierRetriever`` by default).

Thin by design: LlamaIndex nodes and queries are converted to the core's ``softcar.Retriever``
protocol and results back to ``NodeWithScore``. Ranking, validation, training and persistence
live in the core, so the baselines (``softcar.InnerProductRetriever``, ``softcar.BM25Retriever``)
can be wrapped as well.

Each node is indexed as a core document (its id, its text without metadata, its metadata) that
also carries the rest of the node, in LlamaIndex's own JSON (``doc_to_json``), under the metadata
key :data:`NODE_KEY`. Retrieval rebuilds the original node (same class, id, text, metadata,
relationships, ``ref_doc_id``, excluded metadata keys, templates), and since the core persists
documents with their metadata, nodes survive ``persist`` / ``from_persist_dir`` unchanged.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.constants import DATA_KEY, TYPE_KEY
from llama_index.core.ingestion import run_transformations
from llama_index.core.llms import LLM
from llama_index.core.schema import (
    BaseNode,
    IndexNode,
    MetadataMode,
    NodeWithScore,
    QueryBundle,
    TextNode,
    TransformComponent,
)
from llama_index.core.storage.docstore.types import BaseDocumentStore
from llama_index.core.storage.docstore.utils import json_to_doc
from typing_extensions import Self

import softcar
from llama_index.retrievers.softcar.dataset import finetune_dataset_parts, is_finetune_dataset, training_pairs

FeedbackDoc = str | BaseNode | NodeWithScore

NODE_KEY = "__llama_index_node__"
"""Reserved core-document metadata key holding the node's LlamaIndex JSON (never shown to the LLM)."""


class ClassifierRetriever(BaseRetriever):
    """LlamaIndex retriever backed by a softcar retriever.

    Each hit is ``NodeWithScore(node=<the node that was indexed>, score=...)``; node ids are the
    softcar document ids (what evaluation datasets and feedback refer to). Documents indexed
    without a node (a core retriever fitted directly) come back as ``TextNode(id_, text, metadata)``.

    Example:
        .. code-block:: python

            from llama_index.retrievers.softcar import ClassifierRetriever

            li = ClassifierRetriever.from_defaults(nodes=nodes, similarity_top_k=4)
            engine = RetrieverQueryEngine.from_args(li, llm=llm)
            li.update([("question", "node-id")])  # fine-tune from feedback
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
            raise TypeError(f"retriever must implement softcar.Retriever, got {type(retriever).__name__}")
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
        self._similarity_top_k = softcar.validate_k(value)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_defaults(
        cls,
        index: Any = None,
        nodes: Sequence[BaseNode] | None = None,
        docstore: BaseDocumentStore | None = None,
        similarity_top_k: int = 4,
        **kwargs: Any,
    ) -> Self:
        """Fit on exactly one of ``nodes``, a ``docstore`` (all its nodes) or an ``index`` (its docstore).

        As ``BM25Retriever.from_defaults``. ``kwargs`` go to :meth:`from_nodes` (``retriever=``,
        ``queries=``, ``callback_manager=``, ``encoder=``, ``config=softcar.TrainConfig(...)``, ...).
        """
        if sum(source is not None for source in (index, nodes, docstore)) != 1:
            raise ValueError("pass exactly one of index, nodes or docstore")
        if index is not None:
            docstore = index.docstore
        if docstore is not None:
            nodes = list(docstore.docs.values())
            if not nodes:
                raise ValueError("the docstore has no nodes (a vector store that keeps the text leaves it empty)")
        return cls.from_nodes(list(nodes or ()), similarity_top_k, **kwargs)

    @classmethod
    def from_nodes(
        cls,
        nodes: Sequence[BaseNode],
        similarity_top_k: int = 4,
        *,
        retriever: Any = None,
        queries: Any = None,
        llm: LLM | None = None,
        questions_per_node: int = 3,
        callback_manager: CallbackManager | None = None,
        **retriever_kwargs: Any,
    ) -> Self:
        """Fit a softcar retriever on ``nodes`` (node ids become document ids) and wrap it.

        Args:
            nodes: any ``BaseNode`` s; their text without metadata is indexed, and they come back
                whole from retrieval.
            similarity_top_k: default number of results.
            retriever: an unfitted softcar retriever to fit (e.g. ``softcar.BM25Retriever()``);
                default: ``softcar.ClassifierRetriever(**retriever_kwargs)``.
            queries: optional labelled training data: ``(question, node_id)`` pairs or an
                ``EmbeddingQAFinetuneDataset`` (object, dict or JSON path) over these nodes.
            llm: a LlamaIndex ``LLM`` that writes ``questions_per_node`` training questions per
                node (``softcar.QUESTION_PROMPT``); questions that do not lead back to their
                node are dropped, and nodes it fails on keep their text spans.
            **retriever_kwargs: ``softcar.ClassifierRetriever`` arguments (``encoder``,
                ``adapter``, ``config=softcar.TrainConfig(...)``, ...).
        """
        if retriever is None:
            retriever = softcar.ClassifierRetriever(**retriever_kwargs)
        elif retriever_kwargs:
            raise TypeError(f"unexpected arguments with an explicit retriever: {sorted(retriever_kwargs)}")
        pairs = training_pairs(queries) if is_finetune_dataset(queries) else queries
        records = [_record(node) for node in nodes]
        generation = {} if llm is None else {"query_generator": question_generator(llm, questions_per_node)}
        retriever.fit(records, queries=pairs, **generation)
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
    def from_persist_dir(
        cls, persist_dir: str | os.PathLike[str], similarity_top_k: int = 4, **load_kwargs: Any
    ) -> Self:
        """Load any softcar checkpoint written by :meth:`persist` (or ``softcar fit``)."""
        return cls(softcar.load_retriever(persist_dir, **load_kwargs), similarity_top_k)

    def persist(self, persist_dir: str | os.PathLike[str]) -> None:
        """Save the wrapped retriever atomically (safetensors + JSON, nodes included)."""
        self._retriever.save(persist_dir)

    # ------------------------------------------------------------------ management
    def add_nodes(self, nodes: Sequence[BaseNode]) -> list[str]:
        """Add nodes to the store (softcar gives them head rows without retraining); returns ids."""
        return self._retriever.add_documents([_record(node) for node in nodes])

    def update(self, feedback: Iterable[tuple[str, FeedbackDoc]], **kwargs: Any) -> Any:
        """Learn from ``(question, node)`` feedback (node id, node or ``NodeWithScore``).

        Only retrievers that learn (``softcar.ClassifierRetriever``) support it; ``kwargs`` go to
        their ``update`` (e.g. ``epochs=3`` to train as well as add question rows). Returns the
        core's result (losses per epoch).
        """
        if not callable(getattr(self._retriever, "update", None)):
            raise NotImplementedError(f"{type(self._retriever).__name__} does not learn from feedback")
        return self._retriever.update(softcar.normalize_pairs(feedback, doc_id=_node_id), **kwargs)

    async def aupdate(self, feedback: Iterable[tuple[str, FeedbackDoc]], **kwargs: Any) -> Any:
        """:meth:`update` in a worker thread so the event loop keeps serving queries."""
        pairs = softcar.normalize_pairs(feedback, doc_id=_node_id)
        return await asyncio.to_thread(self.update, pairs, **kwargs)

    # ------------------------------------------------------------------ retrieval
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return _to_nodes(self._retriever.retrieve(query_bundle.query_str, k=self._similarity_top_k))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # The core is blocking (torch); a worker thread keeps the event loop responsive.
        return await asyncio.to_thread(self._retrieve, query_bundle)

    def retrieve_batch(self, queries: Sequence[str]) -> list[list[NodeWithScore]]:
        """Many queries in one core ``retrieve_batch`` call (embedded together; no callbacks)."""
        return [_to_nodes(hits) for hits in self._retriever.retrieve_batch(list(queries), k=self._similarity_top_k)]

    async def aretrieve_batch(self, queries: Sequence[str]) -> list[list[NodeWithScore]]:
        return await asyncio.to_thread(self.retrieve_batch, queries)


def _record(node: BaseNode) -> dict[str, Any]:
    """A node as a core document: its id, text and metadata, plus the rest of the node as JSON."""
    if NODE_KEY in node.metadata:
        raise ValueError(f"node {node.node_id!r}: the metadata key {NODE_KEY!r} is reserved")
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    node_type = node.get_type()
    data = node.to_dict(mode="json")
    del data["metadata"]  # stored once, as the document's metadata
    if data.get("text") == text:
        data["text"] = None  # stored once, as the document's text
    payload = {DATA_KEY: data, TYPE_KEY: getattr(node_type, "value", node_type)}
    return {"id": node.node_id, "text": text, "metadata": {**node.metadata, NODE_KEY: payload}}


def _node(document: softcar.Document) -> BaseNode:
    """The node a core document was made from (a ``TextNode`` if it was indexed without one)."""
    metadata = {key: value for key, value in document.metadata.items() if key != NODE_KEY}
    payload = document.metadata.get(NODE_KEY)
    if payload is None:
        return TextNode(id_=document.id, text=document.text, metadata=copy.deepcopy(metadata))
    # A deep copy: postprocessors may edit the returned node, never the stored document.
    data = copy.deepcopy({**payload[DATA_KEY], "metadata": metadata})
    if "text" in data and data["text"] is None:
        data["text"] = document.text
    return json_to_doc({DATA_KEY: data, TYPE_KEY: payload[TYPE_KEY]})


def _to_nodes(hits: Sequence[softcar.ScoredDocument]) -> list[NodeWithScore]:
    return [NodeWithScore(node=_node(hit.document), score=hit.score) for hit in hits]


def _node_id(doc: Any) -> Any:
    """The softcar id of a feedback node; other values go to the core's pair validation."""
    if isinstance(doc, NodeWithScore):
        doc = doc.node
    return doc.node_id if isinstance(doc, BaseNode) else doc


def question_generator(llm: LLM, count: int = 3) -> softcar.QueryGenerator:
    """A softcar query generator backed by a LlamaIndex ``LLM`` (``complete``)."""

    def generate(text: str) -> list[str]:
        reply = llm.complete(softcar.QUESTION_PROMPT.format(count=count, text=text))
        return softcar.parse_questions(reply.text, limit=count)

    return generate
