"""What every softcar retriever shares: the document store, validated retrieval, checkpoints.

Subclasses implement :meth:`BaseRetriever._fit` / ``_add`` (index documents), ``_search``
(scores and rows of the top ``k``) and ``_save_state`` / ``_load_state`` (their own tensors and
settings). Each subclass names its checkpoint ``kind``; :func:`load_retriever` reads the kind
from a checkpoint's manifest and dispatches to the registered class.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from typing_extensions import Self

from softcar.config import RetrieverConfig
from softcar.documents import Document, DocumentLike, ScoredDocument, coerce_documents
from softcar.errors import CorruptCheckpointError
from softcar.persistence import atomic_directory, read_documents, read_manifest, write_documents, write_manifest
from softcar.validation import TrainingPair, require_fitted, validate_k, validate_queries, validate_query

logger = logging.getLogger(__name__)

DOCUMENTS_FILE = "documents.jsonl"

_KINDS: dict[str, type[BaseRetriever]] = {}


class BaseRetriever(ABC):
    """Document store + ``retrieve`` via ``retrieve_batch`` + template ``save`` / ``load``.

    Thread-safe: every public method holds the retriever's lock, so one instance can serve a
    web app's worker threads while ``update`` trains.
    """

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            if kind in _KINDS and _KINDS[kind] is not cls:
                raise TypeError(f"checkpoint kind {kind!r} is already registered by {_KINDS[kind].__name__}")
            _KINDS[kind] = cls

    def _init_store(self) -> None:
        self._documents: list[Document] = []
        self._row_of: dict[str, int] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ document store
    @property
    def documents(self) -> list[Document]:
        """The document store, in row order (a copy)."""
        return list(self._documents)

    def __len__(self) -> int:
        return len(self._documents)

    def _store(self, docs: Sequence[Document]) -> None:
        for doc in docs:
            self._row_of[doc.id] = len(self._documents)
            self._documents.append(doc)

    def _clear_store(self) -> None:
        self._documents = []
        self._row_of = {}

    # ------------------------------------------------------------------ indexing
    def fit(self, documents: Iterable[DocumentLike], queries: Iterable[TrainingPair] | None = None) -> Self:
        """Index ``documents`` from scratch (``queries``: optional ``(query, doc_id)`` pairs)."""
        docs = coerce_documents(documents)
        with self._lock:
            self._clear_store()
            self._fit(docs, queries)
        return self

    def add_documents(self, documents: Iterable[DocumentLike]) -> list[str]:
        """Add documents to the index; returns their ids."""
        with self._lock:
            docs = coerce_documents(documents, self._row_of, start_index=len(self._documents))
            self._add(docs)
            return [d.id for d in docs]

    @abstractmethod
    def _fit(self, docs: list[Document], queries: Iterable[TrainingPair] | None) -> None:
        """Index ``docs`` into an empty store (call ``self._store(docs)``)."""

    @abstractmethod
    def _add(self, docs: list[Document]) -> None:
        """Index ``docs`` after the existing ones (call ``self._store(docs)``)."""

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, query: str, k: int = 4) -> list[ScoredDocument]:
        """Top-``k`` documents for ``query`` (``k`` above the corpus size returns all)."""
        validate_query(query)
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int = 4) -> list[list[ScoredDocument]]:
        """Top-``k`` documents for each query; higher scores are better."""
        queries = validate_queries(queries)
        k = validate_k(k)
        with self._lock:
            require_fitted(self._documents, type(self).__name__)
            if not queries:
                return []
            scores, rows = self._search(queries, min(k, len(self._documents)))
            docs = self._documents
            return [
                [ScoredDocument(document=docs[i], score=float(s)) for s, i in zip(s_row, i_row)]
                for s_row, i_row in zip(scores.tolist(), rows.tolist())
            ]

    @abstractmethod
    def _search(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, rows)``, each ``[len(queries), k]``, best first."""

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a safetensors + JSON checkpoint atomically (the old one survives a crash)."""
        with self._lock:
            require_fitted(self._documents, type(self).__name__)
            with atomic_directory(path) as tmp:
                write_documents(tmp / DOCUMENTS_FILE, self._documents)
                payload = self._save_state(tmp)
                write_manifest(tmp, self.kind, {**payload, "num_documents": len(self._documents)})
        logger.info("saved %d-document %s to %s", len(self._documents), type(self).__name__, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        encoder: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        show_progress: bool | None = None,
    ) -> Self:
        """Load a checkpoint written by :meth:`save`.

        ``encoder`` overrides where the base model is loaded from, ``device`` where it runs;
        retrievers without a neural encoder (BM25) accept and ignore both. Raises
        ``CheckpointNotFoundError``, ``CorruptCheckpointError`` (bad checksum, inconsistent
        files) or ``EncoderMismatchError``.
        """
        manifest = read_manifest(path, cls.kind)
        options = {"encoder": encoder, "device": device, "show_progress": show_progress}
        return cls._load_verified(Path(path), manifest, **{k: v for k, v in options.items() if v is not None})

    @classmethod
    def _load_verified(cls, folder: Path, manifest: dict[str, Any], **options: Any) -> Self:
        """``load`` once the manifest and its checksums have been verified."""
        documents = read_documents(folder / DOCUMENTS_FILE)
        try:
            num_documents = int(manifest["num_documents"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{folder}: manifest has no valid num_documents: {exc}") from exc
        if not documents or len(documents) != num_documents:
            raise CorruptCheckpointError(
                f"{folder}: {DOCUMENTS_FILE} holds {len(documents)} documents, the manifest says {num_documents}"
            )
        self = cls._from_manifest(folder, manifest, **options)
        with self._lock:
            self._store(documents)
            self._load_state(folder, manifest)
        return self

    @abstractmethod
    def _save_state(self, folder: Path) -> dict[str, Any]:
        """Write this retriever's files into ``folder``; return manifest fields."""

    @classmethod
    @abstractmethod
    def _from_manifest(cls, folder: Path, manifest: dict[str, Any], **options: Any) -> Self:
        """An empty retriever configured as the manifest says (``options`` override)."""

    @abstractmethod
    def _load_state(self, folder: Path, manifest: dict[str, Any]) -> None:
        """Restore tensors / indexes for the documents already in the store."""


def encoder_manifest(config: RetrieverConfig, fingerprint: str) -> dict[str, Any]:
    """Manifest fields of a retriever built on a neural encoder: its config and the SHA-256 of
    the base encoder's weights (checked on load)."""
    return {"config": config.model_dump(mode="json"), "encoder": {"name": config.encoder, "fingerprint": fingerprint}}


def parse_encoder_manifest(folder: Path, manifest: dict[str, Any]) -> tuple[RetrieverConfig, str]:
    """``(config, encoder fingerprint)`` of an :func:`encoder_manifest`; bad fields are corruption."""
    try:
        return RetrieverConfig.model_validate(manifest["config"]), str(manifest["encoder"]["fingerprint"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpointError(f"{folder}: manifest is missing or has invalid fields: {exc}") from exc


def retriever_kinds() -> dict[str, type[BaseRetriever]]:
    """Checkpoint kind → retriever class, for every registered retriever."""
    return dict(_KINDS)


def load_retriever(path: str | os.PathLike[str], **options: Any) -> BaseRetriever:
    """Load any softcar checkpoint, dispatching on the kind recorded in its manifest.

    ``options`` (``encoder``, ``device``, ``show_progress``) go to that class's ``load``.
    """
    manifest = read_manifest(path)
    kind = manifest.get("kind")
    if kind not in _KINDS:
        raise CorruptCheckpointError(f"{path}: unknown retriever kind {kind!r}; known: {sorted(_KINDS)}")
    unknown = set(options) - {"encoder", "device", "show_progress"}
    if unknown:
        raise TypeError(f"load_retriever() got unexpected options {sorted(unknown)}")
    given = {k: v for k, v in options.items() if v is not None}
    return _KINDS[kind]._load_verified(Path(path), manifest, **given)
