"""Input validation shared by the core, the integrations and the federated app.

One place decides what a valid query, ``k`` or feedback pair is, so every entry point raises the
same typed error for the same mistake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from softcar.documents import Document
from softcar.errors import (
    EmptyQueryError,
    InvalidKError,
    InvalidQueryError,
    InvalidTrainingPairError,
    NotFittedError,
)

TrainingPair = tuple[str, str]
"""A labelled or feedback example: ``(query_text, doc_id)``."""


def validate_query(query: object) -> str:
    """Return the query if it is a non-blank string, else raise a typed error."""
    if not isinstance(query, str):
        raise InvalidQueryError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise EmptyQueryError("query is empty or whitespace only")
    return query


def validate_queries(queries: object) -> list[str]:
    """A sequence of valid queries (a bare string is refused: use ``retrieve`` for one query)."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise InvalidQueryError("queries must be a sequence of str (use retrieve() for one query)")
    return [validate_query(q) for q in queries]


def validate_k(k: object) -> int:
    """``k`` must be an int ≥ 1; values above the corpus size are clipped by the caller."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidKError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise InvalidKError(f"k must be >= 1, got {k}")
    return k


def require_fitted(documents: Sequence[Document], name: str) -> None:
    """Raise ``NotFittedError`` when a retriever has no documents yet."""
    if not documents:
        raise NotFittedError(f"{name} has no documents: call fit(documents) first")


def normalize_pairs(pairs: Iterable[Any] | None, doc_id: Callable[[Any], str] | None = None) -> list[TrainingPair]:
    """Validate ``(query_text, doc)`` pairs and return ``(query_text, doc_id)`` pairs.

    ``doc_id`` maps a framework's document object (a LangChain ``Document``, a LlamaIndex node)
    to its id; plain string ids pass through. Whether an id is *known* is the retriever's check.
    """
    if pairs is None:
        return []
    if isinstance(pairs, (str, bytes)) or (isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], str)):
        raise InvalidTrainingPairError(
            "expected an iterable of (query_text, doc_id) pairs; wrap a single pair in a list"
        )
    out: list[TrainingPair] = []
    for position, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidTrainingPairError(f"training pair at position {position} is not a (query_text, doc_id) pair")
        text, doc = pair
        if doc_id is not None and not isinstance(doc, str):
            doc = doc_id(doc)
        if not isinstance(text, str) or not isinstance(doc, str):
            raise InvalidTrainingPairError(f"training pair at position {position} must hold two str, got {pair!r}")
        if not text.strip():
            raise EmptyQueryError(f"training pair at position {position} has an empty query")
        out.append((text, doc))
    return out
