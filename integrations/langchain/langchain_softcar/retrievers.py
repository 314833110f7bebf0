"""LangChain retriever over any softcar retriever (a fitted ``softcar.ClassifierRetriever`` by default).

The adapter is deliberately thin: it converts LangChain inputs to the core's ``softcar.Retriever``
protocol and core results back to LangChain ``Document`` objects. Ranking, validation of queries,
``k`` and feedback pairs, training and persistence all live in the core, so the baselines
(``softcar.InnerProductRetriever``, ``softcar.BM25Retriever``) can be wrapped too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, field_validator
from typing_extensions import Self

import softcar
from softcar.errors import InvalidTrainingPairError

Feedback = Iterable[tuple[str, "str | Document"]]
BatchHits = dict[str, list[softcar.ScoredDocument]]


class ClassifierRetriever(BaseRetriever):
    """LangChain retriever backed by a softcar retriever.

    Every call goes to ``retriever.retrieve`` (``batch``/``abatch``: one ``retrieve_batch``); each
    hit becomes a ``Document`` whose ``id`` is the softcar document id and whose ``metadata`` is
    the document's metadata plus ``"score"`` (higher is better).

    Example:
        .. code-block:: python

            from langchain_softcar import ClassifierRetriever

            lc = ClassifierRetriever.from_texts(["...", "..."], k=4)
            docs = lc.invoke("question")  # or lc.invoke("question", k=2)
            lc.update([("question", docs[0])])  # fine-tune from feedback
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any = Field(
        description="A fitted object implementing the softcar.Retriever protocol "
        "(ClassifierRetriever, InnerProductRetriever, BM25Retriever, ...)."
    )
    k: int = Field(default=4, ge=1, description="Number of documents to return (per-call `k=` overrides it).")

    @field_validator("retriever")
    @classmethod
    def _check_retriever(cls, value: Any) -> Any:
        # Fail at construction, not at the first query deep inside a chain.
        if not isinstance(value, softcar.Retriever):
            raise ValueError(f"retriever must implement softcar.Retriever, got {type(value).__name__}")
        if not value.documents:
            raise ValueError("retriever has no documents: fit it first, or use ClassifierRetriever.from_texts(...)")
        return value

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        metadatas: Sequence[dict[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
        k: int = 4,
        **kwargs: Any,
    ) -> Self:
        """Fit on ``texts`` (ids default to ``"0"``, ``"1"``, ...); ``kwargs`` as in :meth:`from_documents`."""
        texts = list(texts)
        for name, values in (("metadatas", metadatas), ("ids", ids)):
            if values is not None and len(values) != len(texts):
                raise ValueError(f"got {len(values)} {name} for {len(texts)} texts")
        documents = [
            Document(
                page_content=text,
                metadata=dict(metadatas[i]) if metadatas else {},
                id=str(ids[i]) if ids is not None else str(i),
            )
            for i, text in enumerate(texts)
        ]
        return cls.from_documents(documents, k, **kwargs)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[Document],
        k: int = 4,
        *,
        retriever: Any = None,
        queries: Iterable[tuple[str, str]] | None = None,
        llm: BaseLanguageModel | None = None,
        questions_per_document: int = 3,
        **retriever_kwargs: Any,
    ) -> Self:
        """Fit a softcar retriever on LangChain documents and wrap it.

        ``Document.id`` becomes the softcar id (its position when unset). ``retriever``: an
        unfitted softcar retriever to fit (e.g. ``softcar.BM25Retriever()``); default
        ``softcar.ClassifierRetriever(**retriever_kwargs)`` (``encoder=``, ``adapter=``,
        ``config=softcar.TrainConfig(...)``, ...). ``queries``: labelled ``(question, doc_id)`` pairs.
        ``llm``: a chat model or LLM that writes ``questions_per_document`` training questions per
        document (``softcar.QUESTION_PROMPT``); questions that do not lead back to their document
        are dropped, and documents it fails on keep their text spans.
        """
        if retriever is None:
            retriever = softcar.ClassifierRetriever(**retriever_kwargs)
        elif retriever_kwargs:
            raise TypeError(f"unexpected arguments with an explicit retriever: {sorted(retriever_kwargs)}")
        records = [_record(doc, str(i)) for i, doc in enumerate(documents)]
        generation = {} if llm is None else {"query_generator": question_generator(llm, questions_per_document)}
        retriever.fit(records, queries=queries, **generation)
        return cls(retriever=retriever, k=k)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], k: int = 4, **load_kwargs: Any) -> Self:
        """Load any softcar checkpoint (``softcar.load_retriever``) and wrap it."""
        return cls(retriever=softcar.load_retriever(path, **load_kwargs), k=k)

    # ------------------------------------------------------------------ management
    def save(self, path: str | os.PathLike[str]) -> None:
        """Save the wrapped retriever; reload with :meth:`from_pretrained`."""
        self.retriever.save(path)

    def add_documents(self, documents: Iterable[Document]) -> list[str]:
        """Add LangChain documents to the store (no retraining for softcar); returns their ids."""
        return self.retriever.add_documents([_record(doc) for doc in documents])

    def update(self, feedback: Feedback, **kwargs: Any) -> Any:
        """Learn from ``(question, doc)`` feedback, ``doc`` a softcar id or a ``Document`` returned here.

        Only retrievers that learn (``softcar.ClassifierRetriever``) support it; ``kwargs`` go to
        their ``update`` (e.g. ``epochs=3`` to train as well as add question rows). Returns what the
        core returns (losses per epoch).
        """
        if not callable(getattr(self.retriever, "update", None)):
            raise NotImplementedError(f"{type(self.retriever).__name__} does not learn from feedback")
        return self.retriever.update(softcar.normalize_pairs(feedback, doc_id=_document_id), **kwargs)

    async def aupdate(self, feedback: Feedback, **kwargs: Any) -> Any:
        """:meth:`update` in a worker thread, so the event loop keeps serving requests."""
        pairs = softcar.normalize_pairs(feedback, doc_id=_document_id)
        return await asyncio.to_thread(self.update, pairs, **kwargs)

    # ------------------------------------------------------------------ retrieval
    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        _batch_hits: BatchHits | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        k = self._k(k, kwargs)
        if _batch_hits is not None and query in _batch_hits:
            return _to_documents(_batch_hits[query])
        return _to_documents(self.retriever.retrieve(query, k=k))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        # The core is blocking (torch); a worker thread keeps the event loop responsive.
        sync_manager = run_manager.get_sync()
        return await asyncio.to_thread(self._get_relevant_documents, query, run_manager=sync_manager, **kwargs)

    def batch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Embed all queries together in one core ``retrieve_batch`` call, then run LangChain's
        usual per-input ``invoke`` (one callback run per input) on those results."""
        hits = self._hits_by_query(inputs, kwargs)
        return super().batch(inputs, config, return_exceptions=return_exceptions, _batch_hits=hits, **kwargs)

    async def abatch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """:meth:`batch` with the core call in a worker thread."""
        hits = await asyncio.to_thread(self._hits_by_query, inputs, kwargs)
        return await super().abatch(inputs, config, return_exceptions=return_exceptions, _batch_hits=hits, **kwargs)

    def _hits_by_query(self, inputs: Sequence[Any], kwargs: dict[str, Any]) -> BatchHits:
        """Hits of the well-formed queries, by query, from one core ``retrieve_batch`` call.

        Nothing is raised here: whatever fails (a bad query, ``k`` or keyword, or the core call
        itself) is left to each input's own ``invoke``, which raises and reports it as usual.
        """
        queries: dict[str, None] = {}
        for query in inputs:
            try:
                queries[softcar.validate_query(query)] = None
            except (TypeError, ValueError):
                continue
        try:
            kwargs = dict(kwargs)
            k = self._k(kwargs.pop("k", None), kwargs)
            return dict(zip(queries, self.retriever.retrieve_batch(list(queries), k=k), strict=True)) if queries else {}
        except Exception:  # each input's invoke raises it again, with its callbacks
            return {}

    def _k(self, k: int | None, kwargs: dict[str, Any]) -> int:
        unknown = set(kwargs) - {"verbose"}  # BaseRetriever.invoke forwards `verbose`; it means nothing here
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
        return softcar.validate_k(self.k if k is None else k)


def question_generator(llm: BaseLanguageModel, count: int = 3) -> softcar.QueryGenerator:
    """A softcar query generator backed by a LangChain chat model or LLM."""

    def generate(text: str) -> list[str]:
        reply = llm.invoke(softcar.QUESTION_PROMPT.format(count=count, text=text))
        content = reply.content if isinstance(reply, BaseMessage) else reply
        return softcar.parse_questions(content if isinstance(content, str) else str(content), limit=count)

    return generate


def _record(doc: Document, default_id: str | None = None) -> dict[str, Any]:
    """A LangChain ``Document`` as a core document record (the core assigns an id if none)."""
    record: dict[str, Any] = {"text": doc.page_content, "metadata": dict(doc.metadata)}
    if doc.id is not None or default_id is not None:
        record["id"] = doc.id if doc.id is not None else default_id
    return record


def _document_id(doc: Any) -> Any:
    """The softcar id of a feedback ``Document``; other values go to the core's pair validation."""
    if isinstance(doc, Document):
        if doc.id is None:
            raise InvalidTrainingPairError("feedback Document has no id; use documents returned by this retriever")
        return doc.id
    return doc


def _to_documents(hits: Sequence[softcar.ScoredDocument]) -> list[Document]:
    return [
        Document(
            id=hit.document.id, page_content=hit.document.text, metadata={**hit.document.metadata, "score": hit.score}
        )
        for hit in hits
    ]
