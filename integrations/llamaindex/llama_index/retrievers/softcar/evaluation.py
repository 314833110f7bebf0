"""Hit rate and MRR with LlamaIndex's own ``RetrieverEvaluator``, for any LlamaIndex retriever.

Used to compare softcar with a ``VectorStoreIndex`` retriever on the same
``EmbeddingQAFinetuneDataset``-shaped data, scored exactly as LlamaIndex scores retrievers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.evaluation import RetrieverEvaluator
from llama_index.core.evaluation.retrieval.base import RetrievalEvalResult

from llama_index.retrievers.softcar.dataset import finetune_dataset_parts


async def aevaluate_retriever(
    retriever: BaseRetriever,
    dataset: Any,
    metrics: Sequence[str] = ("hit_rate", "mrr"),
    workers: int = 4,
) -> dict[str, float]:
    """Mean of each metric over the dataset's queries (``RetrieverEvaluator.aevaluate`` per query).

    ``dataset``: an ``EmbeddingQAFinetuneDataset`` (object, dict or JSON path). The retriever's
    ``similarity_top_k`` is the cut-off (hit rate@k, MRR@k).
    """
    _, queries, relevant = finetune_dataset_parts(dataset)
    evaluator = RetrieverEvaluator.from_metric_names(list(metrics), retriever=retriever)
    semaphore = asyncio.Semaphore(workers)

    async def one(query_id: str) -> RetrievalEvalResult:
        async with semaphore:
            return await evaluator.aevaluate(query=queries[query_id], expected_ids=relevant[query_id])

    results = await asyncio.gather(*(one(q) for q in relevant if q in queries))
    if not results:
        raise ValueError("the dataset has no judged queries")
    return {name: sum(r.metric_vals_dict[name] for r in results) / len(results) for name in metrics}


def evaluate_retriever(
    retriever: BaseRetriever,
    dataset: Any,
    metrics: Sequence[str] = ("hit_rate", "mrr"),
    workers: int = 4,
) -> dict[str, float]:
    """Synchronous :func:`aevaluate_retriever` (not for use inside a running event loop)."""
    return asyncio.run(aevaluate_retriever(retriever, dataset, metrics, workers))
