"""Baselines behind the same :class:`~softcar.base.BaseRetriever` interface.

- ``InnerProductRetriever``: the frozen encoder (no adapter) + a matrix product over document
  vectors: what a RAG pipeline's vector-store retriever does.
- ``BM25Retriever``: lexical BM25 via ``bm25s``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import torch
from torch.nn import functional as F
from typing_extensions import Self

from softcar.base import BaseRetriever, encoder_manifest, parse_encoder_manifest
from softcar.config import EncodeDtype, PoolingKind, RetrieverConfig
from softcar.documents import Document
from softcar.encoder import (
    SoftEncoder,
    check_fingerprint,
    embed_texts,
    encoder_fingerprint,
    load_encoder,
    pick_device,
)
from softcar.errors import CorruptCheckpointError
from softcar.persistence import read_tensors, write_tensors
from softcar.validation import TrainingPair, require_fitted, validate_queries

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.safetensors"


class InnerProductRetriever(BaseRetriever):
    """Frozen-encoder dense retrieval: cosine inner product between query and document vectors.

    ``batch_size``, ``batch_tokens`` and ``encode_dtype`` mean what ``TrainConfig.encode_*`` do;
    ``device`` is where the encoder runs (None: CUDA when available, as for ``ClassifierRetriever``).
    The document vectors are kept on the CPU either way.
    """

    kind = "inner_product"

    def __init__(
        self,
        encoder: str | os.PathLike[str] | None = None,
        pooling: PoolingKind = "auto",
        *,
        max_query_length: int = 64,
        max_document_length: int = 256,
        batch_size: int = 64,
        batch_tokens: int | None = 4096,
        encode_dtype: EncodeDtype = "float32",
        encoder_kwargs: Mapping[str, Any] | None = None,
        show_progress: bool = True,
        device: str | None = None,
    ) -> None:
        self._init_store()
        lengths = {"max_query_length": max_query_length, "max_document_length": max_document_length}
        self.config = RetrieverConfig(encoder=encoder, encoder_kwargs=encoder_kwargs, pooling=pooling, **lengths)
        self.batch_size, self.batch_tokens, self.encode_dtype = batch_size, batch_tokens, encode_dtype
        self.device = pick_device(device)
        loaded = load_encoder(self.config.encoder, show_progress=show_progress, **self.config.encoder_kwargs)
        self.tokenizer = loaded.tokenizer
        # An identity adapter that is never trained: exactly the frozen encoder.
        self.encoder = SoftEncoder(loaded.model, self.config).to(self.device).eval()
        self._matrix = torch.zeros(0, self.encoder.dim)

    def _embed(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.encoder.dim)
        vectors = embed_texts(
            lambda ids, mask: F.normalize(self.encoder(ids, mask), dim=-1),
            self.tokenizer,
            texts,
            max_length=max_length,
            batch_size=self.batch_size,
            batch_tokens=self.batch_tokens,
            dtype=self.encode_dtype,
            device=self.device,
        )
        return vectors.cpu()

    def embed_queries(self, queries: Sequence[str]) -> torch.Tensor:
        """Unit-norm frozen query vectors ``[n, dim]`` (what retrieval scores against)."""
        with self._lock:
            return self._embed(validate_queries(list(queries)), self.config.max_query_length)

    def embed_documents(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm frozen document vectors ``[n, dim]``."""
        with self._lock:
            return self._embed(list(texts), self.config.max_document_length)

    def fit(self, documents: Iterable[Any], queries: Iterable[TrainingPair] | None = None) -> Self:
        """Embed the documents; labelled queries are ignored (nothing trains)."""
        return super().fit(documents, queries)

    def _fit(self, docs: list[Document], queries: Iterable[TrainingPair] | None) -> None:
        self._matrix = torch.zeros(0, self.encoder.dim)
        self._add(docs)

    def _add(self, docs: list[Document]) -> None:
        self._matrix = torch.cat([self._matrix, self._embed([d.text for d in docs], self.config.max_document_length)])
        self._store(docs)

    def _search(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self._embed(queries, self.config.max_query_length) @ self._matrix.T
        top = torch.topk(scores, k, dim=1)
        return top.values, top.indices

    def _save_state(self, folder: Path) -> dict[str, Any]:
        write_tensors(folder / EMBEDDINGS_FILE, {"documents": self._matrix})
        return encoder_manifest(self.config, encoder_fingerprint(self.encoder.model))

    @classmethod
    def _from_manifest(cls, folder: Path, manifest: dict[str, Any], **options: Any) -> Self:
        config, expected = parse_encoder_manifest(folder, manifest)
        encoder = options.get("encoder")
        self = cls(
            encoder if encoder is not None else config.encoder,
            config.pooling,
            max_query_length=config.max_query_length,
            max_document_length=config.max_document_length,
            encoder_kwargs=config.encoder_kwargs,
            show_progress=options.get("show_progress", True),
            device=options.get("device"),
        )
        check_fingerprint(folder, self.encoder.model, expected, self.config.encoder)
        return self

    def _load_state(self, folder: Path, manifest: dict[str, Any]) -> None:
        matrix = read_tensors(folder / EMBEDDINGS_FILE).get("documents")
        if matrix is None or tuple(matrix.shape) != (len(self._documents), self.encoder.dim):
            raise CorruptCheckpointError(f"{folder}: embeddings do not match the documents")
        self._matrix = matrix


class BM25Retriever(BaseRetriever):
    """Lexical BM25 (``bm25s``), the classic baseline for FAQ-like corpora."""

    kind = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en") -> None:
        self._init_store()
        self.k1, self.b, self.stopwords = k1, b, stopwords
        self._index: bm25s.BM25 | None = None

    def _tokenize(self, texts: list[str]) -> Any:
        return bm25s.tokenize(texts, stopwords=self.stopwords, show_progress=False)

    def _rebuild(self) -> None:
        self._index = bm25s.BM25(k1=self.k1, b=self.b)
        self._index.index(self._tokenize([d.text for d in self._documents]), show_progress=False)

    def fit(self, documents: Iterable[Any], queries: Iterable[TrainingPair] | None = None) -> Self:
        """Index the documents; labelled queries are ignored."""
        return super().fit(documents, queries)

    def _fit(self, docs: list[Document], queries: Iterable[TrainingPair] | None) -> None:
        self._add(docs)

    def _add(self, docs: list[Document]) -> None:
        """BM25's statistics are corpus-wide, so the index is rebuilt (cheap at this scale)."""
        self._store(docs)
        self._rebuild()

    def score_all(self, queries: Sequence[str]) -> torch.Tensor:
        """BM25 scores of every document, ``[len(queries), len(documents)]`` (for score fusion)."""
        with self._lock:
            require_fitted(self._documents, "BM25Retriever")
            assert self._index is not None
            tokens = bm25s.tokenize(list(queries), stopwords=self.stopwords, show_progress=False, return_ids=False)
            empty = np.zeros(len(self._documents), dtype=np.float32)  # a query of stopwords only
            rows = [np.asarray(self._index.get_scores(t), dtype=np.float32) if t else empty for t in tokens]
            return torch.from_numpy(rows[0][None] if len(rows) == 1 else np.stack(rows))

    def _search(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._index is not None
        rows, scores = [], []
        for query in queries:
            ids, values = self._index.retrieve(self._tokenize([query]), k=k, show_progress=False, n_threads=1)
            rows.append(np.asarray(ids[0], dtype=np.int64))
            scores.append(np.asarray(values[0], dtype=np.float32))
        return torch.from_numpy(np.stack(scores)), torch.from_numpy(np.stack(rows))

    def _save_state(self, folder: Path) -> dict[str, Any]:
        """Parameters only: the index is rebuilt on load (no pickled arrays)."""
        return {"params": {"k1": self.k1, "b": self.b, "stopwords": self.stopwords}}

    @classmethod
    def _from_manifest(cls, folder: Path, manifest: dict[str, Any], **options: Any) -> Self:
        """``encoder`` / ``device`` / ``show_progress`` mean nothing to BM25 and are ignored."""
        try:
            return cls(**manifest["params"])
        except (KeyError, TypeError) as exc:
            raise CorruptCheckpointError(f"{folder}: invalid manifest: {exc}") from exc

    def _load_state(self, folder: Path, manifest: dict[str, Any]) -> None:
        self._rebuild()
