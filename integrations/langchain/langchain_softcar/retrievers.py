"""LangChain retriever over any softcar retriever (a fitted ``softcar.ClassifierRetriever`` by default).

The adapter is deliberately thin: it converts LangChain inputs to the core's
``softcar.Retriever`` protocol and core results back to LangChain ``Document`` objects. Ranking,
validation of queries and ``k``, training and persistence all live in the core, so the
baselines (``softcar.InnerProductRetriever``, ``softcar.BM25Retriever``) can be wrapped too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManager,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config, get_config_list
from pydantic import ConfigDict, Field, field_validator
from typing_extensions import Self

import softcar
from softcar import validate_k, validate_query

Feedback = Iterable[tuple[str, "str | Document"]]

# Keyword arguments that ``BaseRetriever.invoke`` forwards but that carry no retrieval meaning.
_IGNORED_KWARGS = frozenset({"verbose"})


class ClassifierRetriever(BaseRetriever):
    """LangChain retriever backed by a softcar retriever.

    Every call goes to ``retriever.retrieve`` / ``retriever.retrieve_batch``; each hit becomes a
    ``Document`` whose ``id`` is the softcar document id and whose ``metadata`` is the document's
    metadata plus ``"score"`` (higher is better).

    Example:
        .. code-block:: python

            from langchain_softcar import ClassifierRetriever

            lc = ClassifierRetriever.from_texts(["...", "..."], k=4)
            docs = lc.invoke("question")       # or lc.invoke("question", k=2)
            lc.update([("question", docs[0].id)])  # fine-tune from feedback
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
            raise ValueError(
                f"retriever must implement softcar.Retriever (fit/retrieve/retrieve_batch/...), got {type(value).__name__}"
            )
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
        *,
        retriever: Any = None,
        queries: Iterable[tuple[str, str]] | None = None,
        **retriever_kwargs: Any,
    ) -> Self:
        """Fit a softcar retriever on ``texts`` and wrap it.

        Args:
            texts: document texts; ``ids`` default to ``"0"``, ``"1"``, ...
            metadatas: one metadata dict per text.
            ids: one id per text (what ``Document.id`` and feedback refer to).
            k: default number of results.
            retriever: an unfitted softcar retriever to fit (e.g. ``softcar.BM25Retriever()``);
                default: ``softcar.ClassifierRetriever(**retriever_kwargs)``.
            queries: optional ``(question, doc_id)`` training pairs passed to ``fit``.
            **retriever_kwargs: ``softcar.ClassifierRetriever`` arguments (``encoder``,
                ``adapter``, ``pooling``, ``config=softcar.TrainConfig(...)``, ...).
        """
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
        records = []
        for i, text in enumerate(texts):
            record: dict[str, Any] = {"text": text, "metadata": dict(metadatas[i]) if metadatas else {}}
            record["id"] = str(ids[i]) if ids is not None else str(i)
            records.append(record)
        if retriever is None:
            retriever = softcar.ClassifierRetriever(**retriever_kwargs)
        elif retriever_kwargs:
            raise TypeError(f"unexpected arguments with an explicit retriever: {sorted(retriever_kwargs)}")
        retriever.fit(records, queries=queries)
        return cls(retriever=retriever, k=k)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[Document],
        k: int = 4,
        *,
        retriever: Any = None,
        queries: Iterable[tuple[str, str]] | None = None,
        **retriever_kwargs: Any,
    ) -> Self:
        """Fit on LangChain documents; ``Document.id`` becomes the softcar id (position if unset)."""
        documents = list(documents)
        ids = [doc.id if doc.id is not None else str(i) for i, doc in enumerate(documents)]
        return cls.from_texts(
            [doc.page_content for doc in documents],
            metadatas=[dict(doc.metadata) for doc in documents],
            ids=ids,
            k=k,
            retriever=retriever,
            queries=queries,
            **retriever_kwargs,
        )

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
        records = []
        for doc in documents:
            record: dict[str, Any] = {"text": doc.page_content, "metadata": dict(doc.metadata)}
            if doc.id is not None:
                record["id"] = doc.id
            records.append(record)
        return self.retriever.add_documents(records)

    def update(self, feedback: Feedback, **kwargs: Any) -> Any:
        """Fine-tune from ``(question, doc)`` feedback, e.g. the documents a chain's answer used.

        ``doc`` is a softcar document id or a LangChain ``Document`` returned by this retriever.
        Only retrievers that learn (``softcar.ClassifierRetriever``) support this; ``kwargs`` go
        to their ``update`` (e.g. ``epochs=``). Returns what the core returns (losses per epoch).
        """
        if not callable(getattr(self.retriever, "update", None)):
            raise NotImplementedError(f"{type(self.retriever).__name__} does not learn from feedback")
        return self.retriever.update(_feedback_pairs(feedback), **kwargs)

    async def aupdate(self, feedback: Feedback, **kwargs: Any) -> Any:
        """:meth:`update` in a worker thread, so the event loop keeps serving requests."""
        pairs = _feedback_pairs(feedback)
        return await asyncio.to_thread(self.update, pairs, **kwargs)

    # ------------------------------------------------------------------ retrieval
    def _k(self, k: int | None, kwargs: dict[str, Any]) -> int:
        unknown = set(kwargs) - _IGNORED_KWARGS
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
        return validate_k(self.k if k is None else k)

    def _to_documents(self, hits: Sequence[softcar.ScoredDocument]) -> list[Document]:
        return [
            Document(
                id=hit.document.id,
                page_content=hit.document.text,
                metadata={**hit.document.metadata, "score": hit.score},
            )
            for hit in hits
        ]

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self._to_documents(self.retriever.retrieve(query, k=self._k(k, kwargs)))

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        # The core is blocking (torch); a worker thread keeps the event loop responsive.
        hits = await asyncio.to_thread(self.retriever.retrieve, query, k=self._k(k, kwargs))
        return self._to_documents(hits)

    # ------------------------------------------------------------------ batching
    def _run_info(self, query: Any, config: RunnableConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments for ``on_retriever_start``, mirroring ``BaseRetriever.invoke``."""
        return {
            "configure": {
                "inheritable_callbacks": config.get("callbacks"),
                "local_callbacks": None,
                "verbose": kwargs.get("verbose", False),
                "inheritable_tags": config.get("tags"),
                "local_tags": self.tags,
                "inheritable_metadata": {**(config.get("metadata") or {}), **self._get_ls_params(**kwargs)},
                "local_metadata": self.metadata,
            },
            "start": {
                "serialized": None,
                "query": query,
                "name": config.get("run_name") or self.get_name(),
                "run_id": config.get("run_id"),
            },
        }

    def _split_valid(self, inputs: Sequence[Any]) -> tuple[list[int], dict[int, Exception]]:
        """Indices of well-formed queries, and the core's error for each bad one."""
        valid, errors = [], {}
        for i, query in enumerate(inputs):
            try:
                validate_query(query)
                valid.append(i)
            except Exception as exc:  # noqa: BLE001 - reported per input below
                errors[i] = exc
        return valid, errors

    def _outcomes(
        self, inputs: Sequence[Any], valid: list[int], errors: dict[int, Exception], hits: Any
    ) -> list[list[Document] | Exception]:
        outcomes: list[list[Document] | Exception] = []
        by_index = dict(zip(valid, hits)) if not isinstance(hits, Exception) else {}
        for i in range(len(inputs)):
            if i in errors:
                outcomes.append(errors[i])
            elif isinstance(hits, Exception):
                outcomes.append(hits)
            else:
                outcomes.append(self._to_documents(by_index[i]))
        return outcomes

    def batch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Answer all queries with one ``retrieve_batch`` call (queries are embedded together).

        Callbacks still see one retriever run per input, as with ``invoke``.
        """
        if not inputs:
            return []
        configs = [ensure_config(c) for c in get_config_list(config, len(inputs))]
        managers = []
        for query, cfg in zip(inputs, configs):
            info = self._run_info(query, cfg, kwargs)
            managers.append(CallbackManager.configure(**info["configure"]).on_retriever_start(**info["start"]))
        valid, errors = self._split_valid(inputs)
        hits: Any = []
        try:
            k = self._k(kwargs.pop("k", None), kwargs)
            if valid:
                hits = self.retriever.retrieve_batch([inputs[i] for i in valid], k=k)
        except Exception as exc:  # noqa: BLE001 - attributed to every well-formed input
            hits = exc
        outcomes = self._outcomes(inputs, valid, errors, hits)
        for manager, outcome in zip(managers, outcomes):
            if isinstance(outcome, Exception):
                manager.on_retriever_error(outcome)
            else:
                manager.on_retriever_end(outcome)
        if not return_exceptions:
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
        return outcomes

    async def abatch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch`: one ``retrieve_batch`` call in a worker thread."""
        if not inputs:
            return []
        configs = [ensure_config(c) for c in get_config_list(config, len(inputs))]
        managers = []
        for query, cfg in zip(inputs, configs):
            info = self._run_info(query, cfg, kwargs)
            manager = AsyncCallbackManager.configure(**info["configure"])
            managers.append(await manager.on_retriever_start(**info["start"]))
        valid, errors = self._split_valid(inputs)
        hits: Any = []
        try:
            k = self._k(kwargs.pop("k", None), kwargs)
            if valid:
                hits = await asyncio.to_thread(self.retriever.retrieve_batch, [inputs[i] for i in valid], k=k)
        except Exception as exc:  # noqa: BLE001 - attributed to every well-formed input
            hits = exc
        outcomes = self._outcomes(inputs, valid, errors, hits)
        for manager, outcome in zip(managers, outcomes):
            if isinstance(outcome, Exception):
                await manager.on_retriever_error(outcome)
            else:
                await manager.on_retriever_end(outcome)
        if not return_exceptions:
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
        return outcomes


def _feedback_pairs(feedback: Feedback) -> list[tuple[str, str]]:
    """``(question, doc id | Document)`` → ``(question, doc id)``; the core validates the rest."""
    if isinstance(feedback, tuple) and len(feedback) == 2 and isinstance(feedback[0], str):
        raise TypeError("feedback must be an iterable of (question, doc) pairs; wrap a single pair in a list")
    pairs = []
    for item in feedback:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"feedback items must be (question, doc) pairs, got {item!r}")
        question, doc = item
        if isinstance(doc, Document):
            if doc.id is None:
                raise ValueError("feedback Document has no id; use documents returned by this retriever")
            doc = doc.id
        pairs.append((question, doc))
    return pairs
