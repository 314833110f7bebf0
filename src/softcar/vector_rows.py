"""A ``ClassifierRetriever``'s rows as vectors for any vector database, and exact ranking of what it finds.

softcar scores a document as the best of its head row (``q·w``) and its question rows
(``q·v - offset``). Vector databases rank by cosine, inner product or L2 distance, and know
nothing of offsets or row norms. Each row is therefore pushed *augmented* to ``d + 2``
dimensions so that all three metrics rank entries exactly by softcar's score:

    entry  = [w, β, sqrt(M² - |w|² - β²)] / M        (β = -offset for question rows, else 0)
    query  = [q, 1, 0] / sqrt(2)

Both are unit vectors and ``entry · query = (q·w + β) / (sqrt(2)·M)`` with ``M`` the largest
``sqrt(|w|² + β²)``, so the database's nearest entries are the rows with the highest softcar
score, whatever its metric. Rows of one document share its id in their metadata; the
integrations group what the database returns by that id, and :meth:`VectorRows.rank` scores
those candidate documents exactly in-process (like ``retrieve`` with BM25 fusion off), so an
approximate database index can only miss a document, never reorder the ones it finds.

What the vector-database path does not include: BM25 fusion (its z-scores need BM25 over
every document; the in-process ``retrieve`` fuses, this path equals ``retrieve`` with
``ScoringConfig(hybrid_weight=0)``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from softcar.documents import ScoredDocument
from softcar.errors import UnknownDocumentError

if TYPE_CHECKING:
    from softcar.retriever import ClassifierRetriever

ID_NAMESPACE = uuid.UUID("8d6b3c4e-6f7a-4c1b-9a55-5f0c2e1d7a10")
"""Entry ids are UUIDs (stores such as Qdrant require them), derived from kind and row."""
DOCUMENT_ID_KEY = "softcar_document_id"
"""Metadata key naming an entry's document."""
KIND_KEY = "softcar_row"
"""Metadata key: ``"document"`` (head row) or ``"question"`` (question row)."""


@dataclass
class VectorRow:
    """One entry for a vector store: a head row or a question row, augmented (see module docs)."""

    id: str
    document_id: str
    kind: Literal["document", "question"]
    text: str
    vector: list[float]
    metadata: dict[str, Any] = field(default_factory=dict)


class VectorRows:
    """Snapshot of a fitted retriever's rows for a vector store, and exact ranking of its hits.

    Push :attr:`rows` (``vector``, ``id``, ``text``, ``metadata``) into the store, search it with
    :meth:`query_vectors`, and pass the document ids it returns, best first, to :meth:`rank`.
    Push again after ``update`` / ``add_documents``: the rows move when the retriever learns.
    """

    def __init__(self, retriever: ClassifierRetriever, *, question_rows: bool = True) -> None:
        self.retriever = retriever
        exported = retriever.serving_rows(question_rows=question_rows)
        vectors, biases = exported.vectors.double(), exported.biases.double()
        squared = (vectors**2).sum(dim=1) + biases**2
        self.scale = float(squared.max().sqrt()) if len(squared) else 1.0
        """``M``: the largest augmented row norm (entries are divided by it)."""
        completion = (self.scale**2 - squared).clamp(min=0).sqrt()
        augmented = torch.cat([vectors, biases[:, None], completion[:, None]], dim=1) / self.scale
        self.rows: list[VectorRow] = []
        self._document_of: dict[str, str] = {}
        for i, (doc_id, kind, text) in enumerate(zip(exported.document_ids, exported.kinds, exported.texts)):
            entry_id = str(uuid.uuid5(ID_NAMESPACE, f"{kind}:{i}"))
            metadata = {**exported.metadata[i], DOCUMENT_ID_KEY: doc_id, KIND_KEY: kind}
            row = VectorRow(entry_id, doc_id, kind, text, augmented[i].float().tolist(), metadata)  # type: ignore[arg-type]
            self.rows.append(row)
            self._document_of[entry_id] = doc_id

    @property
    def dim(self) -> int:
        """Dimension of the pushed vectors: the encoder's plus two."""
        return self.retriever.model.encoder.dim + 2

    def document_of(self, entry_id: str | None, metadata: dict[str, Any] | None = None) -> str:
        """The document id of a returned entry, from its metadata or its id."""
        if metadata and DOCUMENT_ID_KEY in metadata:
            return str(metadata[DOCUMENT_ID_KEY])
        if entry_id is not None and entry_id in self._document_of:
            return self._document_of[entry_id]
        raise UnknownDocumentError(f"the vector store returned entry {entry_id!r}, which is not a softcar row")

    def embed(self, queries: Sequence[str]) -> torch.Tensor:
        """Adapter-embedded query vectors ``[n, dim]`` (``ClassifierRetriever.embed_queries``)."""
        return self.retriever.embed_queries(queries)

    def query_vectors(self, vectors: torch.Tensor) -> list[list[float]]:
        """Augmented query vectors for the store's search (see module docs)."""
        return augment_queries(vectors)

    def fetch_k(self, k: int) -> int:
        """Entries to ask the store for: every row of the top-``k`` documents must be among them."""
        return min(len(self.rows), 4 * k + 16 * self.retriever.config.scoring.max_question_rows_per_document)

    def rank(self, vectors: torch.Tensor, hits: Sequence[Sequence[str]], k: int) -> list[list[ScoredDocument]]:
        """Top ``k`` of each query's candidate documents (ids as the store returned them), scored
        exactly in-process with fusion off."""
        return self.retriever.rank_documents(vectors, hits, k)


def augment_queries(vectors: torch.Tensor) -> list[list[float]]:
    """``[q, 1, 0] / sqrt(2)`` for each adapter-embedded query ``q`` (see the module docstring)."""
    vectors = vectors.detach().cpu().double()
    augmented = torch.cat([vectors, torch.ones(len(vectors), 1), torch.zeros(len(vectors), 1)], dim=1)
    return (augmented / math.sqrt(2.0)).float().tolist()


@dataclass
class ServingRows:
    """A retriever's scoring rows (raw, before augmentation): what :class:`VectorRows` pushes."""

    document_ids: list[str]
    kinds: list[str]
    texts: list[str]
    metadata: list[dict[str, Any]]
    vectors: torch.Tensor
    biases: torch.Tensor
    """Added to a row's inner product: ``-question_offset`` for question rows, 0 for head rows."""
