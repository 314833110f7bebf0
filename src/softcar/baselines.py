"""Baselines behind the same :class:`~softcar.interface.Retriever` interface.

- ``InnerProductRetriever``: the frozen encoder (no adapter) + a matrix product over document
  vectors: what a RAG pipeline's vector-store retriever does.
- ``BM25Retriever``: lexical BM25 via ``bm25s``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import bm25s
import torch
from typing_extensions import Self

from softcar.config import DEFAULT_ENCODER, PoolingKind, RetrieverConfig
from softcar.documents import Document, DocumentLike, ScoredDocument, coerce_documents
from softcar.encoder import SoftEncoder, encoder_fingerprint, load_encoder
from softcar.errors import CorruptCheckpointError, EncoderMismatchError
from softcar.validation import require_fitted, validate_k, validate_queries, validate_query
from softcar.persistence import (
    atomic_directory,
    read_documents,
    read_manifest,
    read_tensors,
    write_documents,
    write_manifest,
    write_tensors,
)

logger = logging.getLogger(__name__)


class InnerProductRetriever:
    """Frozen-encoder dense retrieval: cosine inner product between query and document vectors."""

    kind = "inner_product"

    def __init__(
        self,
        encoder: str | os.PathLike[str] | None = None,
        pooling: PoolingKind = "auto",
        *,
        max_query_length: int = 64,
        max_document_length: int = 256,
        batch_size: int = 64,
        encoder_kwargs: Mapping[str, Any] | None = None,
        show_progress: bool = True,
    ) -> None:
        self.config = RetrieverConfig(
            encoder=DEFAULT_ENCODER if encoder is None else os.fspath(encoder),
            encoder_kwargs=dict(encoder_kwargs or {}),
            pooling=pooling,
            max_query_length=max_query_length,
            max_document_length=max_document_length,
        )
        self.batch_size = batch_size
        loaded = load_encoder(self.config.encoder, show_progress=show_progress, **self.config.encoder_kwargs)
        self.tokenizer = loaded.tokenizer
        # An identity adapter that is never trained: exactly the frozen encoder.
        self.encoder = SoftEncoder(loaded.model, self.config).eval()
        self._documents: list[Document] = []
        self._matrix = torch.zeros(0, self.encoder.dim)
        self._lock = threading.RLock()

    @property
    def documents(self) -> list[Document]:
        return list(self._documents)

    @torch.no_grad()
    def _embed(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True, truncation=True, max_length=max_length, return_tensors="pt",
            )
            chunks.append(torch.nn.functional.normalize(self.encoder(batch["input_ids"], batch["attention_mask"]), dim=-1))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.encoder.dim)

    def embed_queries(self, queries: Sequence[str]) -> torch.Tensor:
        """Unit-norm frozen query vectors ``[n, dim]`` (what retrieval scores against)."""
        with self._lock:
            return self._embed(list(queries), self.config.max_query_length)

    def embed_documents(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm frozen document vectors ``[n, dim]``."""
        with self._lock:
            return self._embed(list(texts), self.config.max_document_length)

    def fit(self, documents: Iterable[DocumentLike], queries: Iterable[tuple[str, str]] | None = None) -> Self:
        """Embed the documents; labelled queries are ignored (nothing trains)."""
        docs = coerce_documents(documents)
        with self._lock:
            self._documents = []
            self._matrix = torch.zeros(0, self.encoder.dim)
            self._append(docs)
        return self

    def _append(self, docs: list[Document]) -> None:
        vectors = self._embed([d.text for d in docs], self.config.max_document_length)
        self._matrix = torch.cat([self._matrix, vectors])
        self._documents.extend(docs)

    def add_documents(self, documents: Iterable[DocumentLike]) -> list[str]:
        with self._lock:
            docs = coerce_documents(documents, (d.id for d in self._documents), start_index=len(self._documents))
            self._append(docs)
            return [d.id for d in docs]

    def retrieve(self, query: str, k: int = 4) -> list[ScoredDocument]:
        validate_query(query)
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int = 4) -> list[list[ScoredDocument]]:
        queries = validate_queries(queries)
        k = validate_k(k)
        with self._lock:
            require_fitted(self._documents, "InnerProductRetriever")
            if not queries:
                return []
            scores = self._embed(queries, self.config.max_query_length) @ self._matrix.T
            top = torch.topk(scores, min(k, len(self._documents)), dim=1)
            return [
                [ScoredDocument(document=self._documents[i], score=float(s)) for s, i in zip(vs.tolist(), ix.tolist())]
                for vs, ix in zip(top.values, top.indices)
            ]

    def save(self, path: str | os.PathLike[str]) -> None:
        with self._lock:
            require_fitted(self._documents, "InnerProductRetriever")
            with atomic_directory(path) as tmp:
                write_tensors(tmp / "embeddings.safetensors", {"documents": self._matrix})
                write_documents(tmp / "documents.jsonl", self._documents)
                write_manifest(
                    tmp,
                    self.kind,
                    {
                        "config": self.config.model_dump(mode="json"),
                        "encoder": {"name": self.config.encoder, "fingerprint": encoder_fingerprint(self.encoder.model)},
                        "num_documents": len(self._documents),
                    },
                )

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: str | os.PathLike[str] | None = None) -> Self:
        manifest = read_manifest(path, cls.kind)
        try:
            config = RetrieverConfig.model_validate(manifest["config"])
            fingerprint = manifest["encoder"]["fingerprint"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{path}: invalid manifest: {exc}") from exc
        self = cls(
            encoder if encoder is not None else config.encoder,
            config.pooling,
            max_query_length=config.max_query_length,
            max_document_length=config.max_document_length,
            encoder_kwargs=config.encoder_kwargs,
        )
        if encoder_fingerprint(self.encoder.model) != fingerprint:
            raise EncoderMismatchError(f"checkpoint {str(path)!r} was built with a different base encoder")
        documents = read_documents(Path(path) / "documents.jsonl")
        matrix = read_tensors(Path(path) / "embeddings.safetensors").get("documents")
        if matrix is None or matrix.shape != (len(documents), self.encoder.dim):
            raise CorruptCheckpointError(f"{path}: embeddings do not match the documents")
        self._documents, self._matrix = documents, matrix
        return self


class BM25Retriever:
    """Lexical BM25 (``bm25s``), the classic baseline for FAQ-like corpora."""

    kind = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en") -> None:
        self.k1, self.b, self.stopwords = k1, b, stopwords
        self._documents: list[Document] = []
        self._index: bm25s.BM25 | None = None
        self._lock = threading.RLock()

    @property
    def documents(self) -> list[Document]:
        return list(self._documents)

    def _rebuild(self) -> None:
        tokens = bm25s.tokenize([d.text for d in self._documents], stopwords=self.stopwords, show_progress=False)
        self._index = bm25s.BM25(k1=self.k1, b=self.b)
        self._index.index(tokens, show_progress=False)

    def fit(self, documents: Iterable[DocumentLike], queries: Iterable[tuple[str, str]] | None = None) -> Self:
        """Index the documents; labelled queries are ignored."""
        docs = coerce_documents(documents)
        with self._lock:
            self._documents = docs
            self._rebuild()
        return self

    def add_documents(self, documents: Iterable[DocumentLike]) -> list[str]:
        """BM25's statistics are corpus-wide, so the index is rebuilt (cheap at this scale)."""
        with self._lock:
            docs = coerce_documents(documents, (d.id for d in self._documents), start_index=len(self._documents))
            self._documents = self._documents + docs
            self._rebuild()
            return [d.id for d in docs]

    def retrieve(self, query: str, k: int = 4) -> list[ScoredDocument]:
        validate_query(query)
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int = 4) -> list[list[ScoredDocument]]:
        queries = validate_queries(queries)
        k = validate_k(k)
        with self._lock:
            require_fitted(self._documents, "BM25Retriever")
            if not queries:
                return []
            k = min(k, len(self._documents))
            assert self._index is not None
            results = []
            for query in queries:
                tokens = bm25s.tokenize([query], stopwords=self.stopwords, show_progress=False)
                ids, scores = self._index.retrieve(tokens, k=k, show_progress=False, n_threads=1)
                results.append(
                    [ScoredDocument(document=self._documents[int(i)], score=float(s)) for i, s in zip(ids[0], scores[0])]
                )
            return results

    def save(self, path: str | os.PathLike[str]) -> None:
        """Documents + parameters; the index is rebuilt on load (no pickled arrays)."""
        with self._lock:
            require_fitted(self._documents, "BM25Retriever")
            with atomic_directory(path) as tmp:
                write_documents(tmp / "documents.jsonl", self._documents)
                write_manifest(tmp, self.kind, {"params": {"k1": self.k1, "b": self.b, "stopwords": self.stopwords},
                                                "num_documents": len(self._documents)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        manifest = read_manifest(path, cls.kind)
        try:
            self = cls(**manifest["params"])
        except (KeyError, TypeError) as exc:
            raise CorruptCheckpointError(f"{path}: invalid manifest: {exc}") from exc
        self._documents = read_documents(Path(path) / "documents.jsonl")
        if not self._documents:
            raise CorruptCheckpointError(f"{path}: checkpoint holds no documents")
        self._rebuild()
        return self


def load_retriever(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Load any softcar checkpoint, dispatching on the kind recorded in its manifest."""
    from softcar.retriever import ClassifierRetriever

    kind = read_manifest(path).get("kind")
    classes = {"classifier": ClassifierRetriever, "inner_product": InnerProductRetriever, "bm25": BM25Retriever}
    if kind not in classes:
        raise CorruptCheckpointError(f"{path}: unknown retriever kind {kind!r}")
    return classes[kind].load(path, **kwargs)


