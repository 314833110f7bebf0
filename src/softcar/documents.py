"""Documents and scored results, plus coercion of user input into documents."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from softcar.errors import (
    DuplicateDocumentIdError,
    EmptyCorpusError,
    EmptyDocumentError,
    InvalidDocumentError,
)


class Document(BaseModel):
    """A retrievable unit: its id is what the classifier head predicts."""

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScoredDocument(BaseModel):
    """One retrieval hit: the document and its score (higher is better).

    What the score is depends on the retriever: a cosine inner product (``InnerProductRetriever``),
    a BM25 score (``BM25Retriever``), or for ``ClassifierRetriever`` the head's inner product
    raised by question rows and, when BM25 fusion is on (``calibration.hybrid_weight > 0``), the
    fused ``α · z(bm25) + (1 - α) · z(soft)`` with scores standardised per query, so it is
    comparable between the hits of one query, not across queries.
    """

    model_config = ConfigDict(frozen=True)

    document: Document
    score: float


DocumentLike = Document | str | Mapping[str, Any]


def coerce_documents(
    documents: Iterable[DocumentLike],
    existing_ids: Iterable[str] = (),
    *,
    start_index: int = 0,
    allow_empty: bool = False,
) -> list[Document]:
    """Turn ``Document | str | {"id","text","metadata"}`` items into validated documents.

    Plain strings get ids ``"0"``, ``"1"``, … continuing from ``start_index`` so that ids stay
    unique when documents are added later. Raises a typed error naming the first bad item.
    """
    if isinstance(documents, (str, bytes, Document, Mapping)):
        raise InvalidDocumentError(
            f"documents must be an iterable of documents, not a single {type(documents).__name__}; wrap it in a list"
        )
    seen = set(existing_ids)
    out: list[Document] = []
    for position, item in enumerate(documents):
        index = start_index + position
        if isinstance(item, Document):
            doc = item
        elif isinstance(item, str):
            doc = Document(id=str(index), text=item)
        elif isinstance(item, Mapping):
            text = item.get("text", item.get("page_content"))
            if not isinstance(text, str):
                raise InvalidDocumentError(f"document at position {position} has no string 'text' field")
            doc_id = item.get("id", item.get("_id"))
            doc_id = str(index) if doc_id is None else str(doc_id)
            metadata = item.get("metadata") or {}
            if not isinstance(metadata, Mapping):
                raise InvalidDocumentError(f"document {doc_id!r}: metadata must be a mapping")
            title = item.get("title")
            if title and "title" not in metadata:
                metadata = {**metadata, "title": title}
            doc = Document(id=doc_id, text=text, metadata=dict(metadata))
        else:
            raise InvalidDocumentError(
                f"document at position {position} is a {type(item).__name__}; "
                "expected Document, str or a mapping with 'id'/'text'/'metadata'"
            )
        if not doc.text.strip():
            raise EmptyDocumentError(f"document {doc.id!r} has empty text")
        if doc.id in seen:
            raise DuplicateDocumentIdError(f"duplicate document id {doc.id!r}")
        seen.add(doc.id)
        out.append(doc)
    if not out and not allow_empty:
        raise EmptyCorpusError("no documents given: the corpus is empty")
    return out
