"""Retrieval quality with ``ir_measures`` (pytrec_eval underneath), and query latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import ir_measures
from ir_measures import MRR, R, nDCG

from softcar.interface import Retriever

MEASURES = {"R@1": R @ 1, "R@5": R @ 5, "R@10": R @ 10, "MRR@10": MRR @ 10, "nDCG@10": nDCG @ 10}


def run_retrieval(
    retriever: Retriever, queries: Mapping[str, str], k: int = 10, batch_size: int = 64
) -> dict[str, dict[str, float]]:
    """``{query_id: {doc_id: score}}`` for every query (a TREC-style run)."""
    ids = list(queries)
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        for qid, hits in zip(chunk, retriever.retrieve_batch([queries[q] for q in chunk], k=k)):
            # Rank-derived scores keep ties in the retriever's order for pytrec_eval.
            run[qid] = {hit.document.id: float(len(hits) - rank) for rank, hit in enumerate(hits)}
    return run


def score_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean Recall@1/5/10, MRR@10 and nDCG@10 over every query of ``qrels``.

    As in TREC scoring, a judged query missing from ``run`` counts as retrieving nothing (0).
    """
    aggregated = ir_measures.calc_aggregate(list(MEASURES.values()), dict(qrels), dict(run))
    return {name: float(aggregated.get(measure, 0.0)) for name, measure in MEASURES.items()}


def evaluate(
    retriever: Retriever, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], k: int = 10
) -> dict[str, float]:
    """Quality of ``retriever``, averaged over the ``queries`` that ``qrels`` judges.

    Judgements of queries not in ``queries`` are left out, so a sample of the queries is scored
    as that sample (``score_run`` on the whole ``qrels`` would count each left-out one as a miss).
    """
    judged = {q: t for q, t in queries.items() if q in qrels}
    return score_run(run_retrieval(retriever, judged, k), {q: qrels[q] for q in judged})


def query_latency(retriever: Retriever, queries: list[str], k: int = 10, warmup: int = 3) -> dict[str, float]:
    """Single-query latency in milliseconds (p50/p95/mean), as an interactive RAG sees it."""
    for query in queries[:warmup]:
        retriever.retrieve(query, k=k)
    times = []
    for query in queries:
        start = time.perf_counter()
        retriever.retrieve(query, k=k)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))],
        "mean_ms": statistics.fmean(times),
    }
