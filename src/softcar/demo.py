"""The main job: fit softcar on a real Q&A corpus and compare it with BM25 and frozen search.

Held-out evaluation: softcar trains on the documents and the *original* questions
(``qrels/train.tsv``) and is tested on *reworded* questions (``qrels/test.tsv``) it never saw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from softcar.baselines import BM25Retriever, InnerProductRetriever
from softcar.config import TrainConfig
from softcar.data import load_beir, packaged_dataset_path
from softcar.evaluation import evaluate, query_latency
from softcar.report import format_table
from softcar.retriever import ClassifierRetriever

logger = logging.getLogger(__name__)


def run_demo(
    data: str | Path | None = None,
    *,
    epochs: int = 3,
    show_progress: bool = True,
    echo: Callable[[str], Any] = logger.info,
    examples: int = 3,
) -> dict[str, Any]:
    """Fit three retrievers on the same data, print a comparison table and a few answers."""
    folder = Path(data) if data is not None else packaged_dataset_path("chatterbot_qa")
    dataset = load_beir(folder)
    test_queries, test_qrels = dataset.split("test")
    train_pairs = dataset.training_pairs("train") if "train" in dataset.qrels else []
    echo(
        f"dataset {folder.name}: {len(dataset.corpus)} documents, {len(train_pairs)} training questions, "
        f"{len(test_queries)} held-out questions"
    )
    retrievers: dict[str, Any] = {}
    fit_seconds: dict[str, float] = {}
    for name, build in (
        ("BM25 (bm25s)", lambda: BM25Retriever()),
        ("frozen inner product (MiniLM)", lambda: InnerProductRetriever()),
        (
            "softcar (adapter + head)",
            lambda: ClassifierRetriever(config=TrainConfig(epochs=epochs, show_progress=show_progress)),
        ),
    ):
        start = time.perf_counter()
        retrievers[name] = build().fit(dataset.corpus, queries=train_pairs or None)
        fit_seconds[name] = time.perf_counter() - start
        echo(f"fitted {name} in {fit_seconds[name]:.1f}s")
    rows = []
    sample = list(test_queries.values())[:50]
    for name, retriever in retrievers.items():
        metrics = evaluate(retriever, test_queries, test_qrels)
        latency = query_latency(retriever, sample)
        rows.append({"retriever": name, **metrics, "p50 ms": latency["p50_ms"], "fit s": fit_seconds[name]})
    echo("")
    echo(f"Held-out questions ({len(test_queries)}, reworded, never seen in training):")
    echo(format_table(rows, ["retriever", "R@1", "R@5", "MRR@10", "nDCG@10", "p50 ms", "fit s"]))
    softcar = retrievers["softcar (adapter + head)"]
    echo("")
    answers = []
    for qid, question in list(test_queries.items())[:examples]:
        hit = softcar.retrieve(question, k=1)[0]
        correct = hit.document.id in test_qrels[qid]
        answers.append({"question": question, "answer_id": hit.document.id, "correct": correct})
        echo(f"Q: {question}")
        echo(
            f"A: {' '.join(hit.document.text.split())[:200]}  [{hit.document.id}, {'correct' if correct else 'wrong'}]"
        )
    return {"dataset": str(folder), "documents": len(dataset.corpus), "results": rows, "answers": answers}
