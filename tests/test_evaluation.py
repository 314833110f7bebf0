"""``softcar.evaluate`` scores the queries it is given, also when they are a sample of the qrels."""

from __future__ import annotations

from softcar import BM25Retriever, Document, evaluate, score_run


def _corpus() -> list[Document]:
    topics = ["apple orchard harvest", "violin concerto strings", "glacier ice melt", "rocket engine thrust"]
    return [Document(id=f"d{i}", text=text) for i, text in enumerate(topics)]


def test_a_sample_of_the_queries_is_scored_as_that_sample() -> None:
    retriever = BM25Retriever().fit(_corpus())
    queries = {"q0": "apple harvest", "q1": "violin strings", "q2": "glacier melt", "q3": "rocket thrust"}
    qrels = {q: {f"d{i}": 1} for i, q in enumerate(queries)}
    everything = evaluate(retriever, queries, qrels)
    assert everything["R@1"] == 1.0
    # Half of the queries against the whole qrels: still every one of them at rank 1. (Before
    # 2026-12-04 the other half counted as misses: R@1 0.5, which made benchmarks that evaluate
    # a sample of a large query set report a fraction of the real recall.)
    sample = {q: queries[q] for q in ("q0", "q2")}
    assert evaluate(retriever, sample, qrels)["R@1"] == 1.0


def test_score_run_counts_a_judged_query_missing_from_the_run_as_a_miss() -> None:
    qrels = {"q0": {"d0": 1}, "q1": {"d1": 1}}
    run = {"q0": {"d0": 2.0, "d1": 1.0}}
    assert score_run(run, qrels)["R@1"] == 0.5
    assert score_run(run, {"q0": qrels["q0"]})["R@1"] == 1.0
