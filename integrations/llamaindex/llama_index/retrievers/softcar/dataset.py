"""LlamaIndex's ``EmbeddingQAFinetuneDataset`` shape (``queries``, ``corpus``, ``relevant_docs``).

Accepted as the LlamaIndex object itself (from ``llama_index.finetuning`` or older
``llama_index.core.evaluation``) without importing it, as a dict, or as a path to the JSON its
``save_json`` writes. Used for training (:func:`training_pairs`) and evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def is_finetune_dataset(value: Any) -> bool:
    """Whether ``value`` looks like an ``EmbeddingQAFinetuneDataset`` (object, dict or path)."""
    if isinstance(value, (str, os.PathLike)):
        return True
    if isinstance(value, Mapping):
        return {"queries", "corpus", "relevant_docs"} <= set(value)
    return all(hasattr(value, name) for name in ("queries", "corpus", "relevant_docs"))


def finetune_dataset_parts(dataset: Any) -> tuple[dict[str, str], dict[str, str], dict[str, list[str]]]:
    """``(corpus, queries, relevant_docs)`` of an ``EmbeddingQAFinetuneDataset``-shaped input."""
    if isinstance(dataset, (str, os.PathLike)):
        try:
            dataset = json.loads(Path(dataset).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read an EmbeddingQAFinetuneDataset JSON from {str(dataset)!r}: {exc}") from exc
    if not is_finetune_dataset(dataset):
        raise TypeError("expected an EmbeddingQAFinetuneDataset (or a dict/JSON with queries, corpus, relevant_docs)")
    get = dataset.get if isinstance(dataset, Mapping) else lambda name: getattr(dataset, name)
    corpus, queries, relevant = get("corpus"), get("queries"), get("relevant_docs")
    if not all(isinstance(part, Mapping) for part in (corpus, queries, relevant)):
        raise TypeError("queries, corpus and relevant_docs must be mappings")
    return (
        {str(k): str(v) for k, v in corpus.items()},
        {str(k): str(v) for k, v in queries.items()},
        {str(k): [str(d) for d in v] for k, v in relevant.items()},
    )


def training_pairs(dataset: Any) -> list[tuple[str, str]]:
    """``(question, doc id)`` pairs of an ``EmbeddingQAFinetuneDataset`` (object, dict or JSON path)."""
    _, queries, relevant = finetune_dataset_parts(dataset)
    missing = [q for q in relevant if q not in queries]
    if missing:
        raise ValueError(f"relevant_docs names unknown query id {missing[0]!r}")
    return [(queries[q], doc_id) for q, doc_ids in relevant.items() for doc_id in doc_ids]
