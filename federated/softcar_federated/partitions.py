"""How a dataset is divided into deployments: held-out split, IID / non-IID partitions, each
deployment's untrained retriever and training examples, held-out quality, feedback files.

A dataset (BEIR folder) stands for the union of many deployments. Its judged queries are split
once into *feedback* (what users clicked, used for training) and *held-out* (only evaluated).
Partitions split the documents across deployments, either at random (IID) or by topic (non-IID:
the id prefix before the first ``-``, e.g. ``library-...`` vs ``design-...``), and each
deployment gets the feedback and held-out queries of its own documents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from softcar import BeirDataset, ClassifierRetriever, Document, TrainConfig, evaluate, load_beir

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


@dataclass
class SplitDataset:
    """A dataset with its judged queries divided into training feedback and held-out queries."""

    corpus: list[Document]
    feedback: list[Pair]
    heldout: list[Pair]


@dataclass
class Partition:
    """One deployment's share: its documents, feedback and held-out queries."""

    index: int
    doc_ids: list[str]
    feedback: list[Pair] = field(default_factory=list)
    heldout: list[Pair] = field(default_factory=list)


def _stable_fraction(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_split(path: str | Path, heldout_fraction: float = 0.5, seed: int = 0) -> SplitDataset:
    """Load a BEIR folder and divide its judged pairs into feedback (training) and held-out.

    A dataset with both a ``train`` and a ``test`` split uses them as given (e.g. the packaged
    chatterbot_qa: original questions for training, reworded ones held out). Otherwise every
    split's pairs are divided by a stable hash of the query id, so that all processes (server,
    clients, benchmark) agree without exchanging anything.
    """
    dataset: BeirDataset = load_beir(path)

    def pairs(split: str) -> list[tuple[str, Pair]]:
        queries, qrels = dataset.split(split)
        return [
            (qid, (queries[qid], doc_id))
            for qid in sorted(qrels)
            for doc_id, rel in sorted(qrels[qid].items())
            if rel > 0
        ]

    if "train" in dataset.qrels and "test" in dataset.qrels:
        return SplitDataset(
            corpus=dataset.corpus, feedback=[p for _, p in pairs("train")], heldout=[p for _, p in pairs("test")]
        )
    feedback: list[Pair] = []
    heldout: list[Pair] = []
    seen: set[tuple[str, str, str]] = set()
    for split in sorted(dataset.qrels):
        for qid, pair in pairs(split):
            if (qid, *pair) in seen:  # the same judgement listed in two splits
                continue
            seen.add((qid, *pair))
            (heldout if _stable_fraction(qid, seed) < heldout_fraction else feedback).append(pair)
    return SplitDataset(corpus=dataset.corpus, feedback=feedback, heldout=heldout)


def topic_of(doc: Document) -> str:
    """The non-IID key: the id prefix before the first '-' (FAQ section, product area...)."""
    return doc.id.split("-", 1)[0]


def partition(data: SplitDataset, num_partitions: int, iid: bool, seed: int = 0) -> list[Partition]:
    """Split documents across ``num_partitions`` deployments.

    IID shuffles documents and deals them round-robin. Non-IID sorts topics by size and gives
    each whole topic to the currently smallest partition, so partitions see different topics
    (big topics are split only if there are fewer topics than partitions).
    """
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    docs = list(data.corpus)
    if len(docs) < num_partitions:
        raise ValueError(f"{len(docs)} documents cannot be split into {num_partitions} partitions")
    assignment: dict[str, int] = {}
    if iid:
        random.Random(seed).shuffle(docs)
        for i, doc in enumerate(docs):
            assignment[doc.id] = i % num_partitions
    else:
        topics: dict[str, list[Document]] = defaultdict(list)
        for doc in docs:
            topics[topic_of(doc)].append(doc)
        groups = sorted(topics.values(), key=len, reverse=True)
        while len(groups) < num_partitions:  # too few topics: halve the biggest
            big = groups.pop(0)
            groups += [big[: len(big) // 2], big[len(big) // 2 :]]
            groups.sort(key=len, reverse=True)
        sizes = [0] * num_partitions
        for group in groups:
            target = min(range(num_partitions), key=lambda i: (sizes[i], i))
            for doc in group:
                assignment[doc.id] = target
            sizes[target] += len(group)
    parts = [Partition(index=i, doc_ids=[]) for i in range(num_partitions)]
    for doc in data.corpus:
        parts[assignment[doc.id]].doc_ids.append(doc.id)
    for query, doc_id in data.feedback:
        parts[assignment[doc_id]].feedback.append((query, doc_id))
    for query, doc_id in data.heldout:
        parts[assignment[doc_id]].heldout.append((query, doc_id))
    return parts


def train_config(pseudo_queries: int, seed: int = 0) -> TrainConfig:
    """The core TrainConfig used for local retrievers (no progress bars in SuperNodes)."""
    return TrainConfig(epochs=0, pseudo_queries_per_document=pseudo_queries, seed=seed, show_progress=False)


def build_retriever(
    documents: Sequence[Document],
    encoder: str = "",
    adapter: str = "linear",
    *,
    max_query_length: int = 32,
    pseudo_queries: int = 4,
    seed: int = 0,
) -> ClassifierRetriever:
    """An untrained retriever over ``documents`` (identity adapter, head = document embeddings),
    i.e. exactly inner-product search with the frozen encoder: the common starting point."""
    retriever = ClassifierRetriever(
        encoder or None,
        adapter=adapter,  # type: ignore[arg-type]
        config=train_config(pseudo_queries, seed),
        max_query_length=max_query_length,
    )
    torch.manual_seed(seed)
    retriever.fit(list(documents))
    return retriever


def local_examples(
    retriever: ClassifierRetriever, own_doc_ids: Iterable[str] | None, feedback: Sequence[Pair]
) -> list[tuple[str, int]]:
    """(text, head row) training examples of one deployment: pseudo-queries of its own documents
    plus its feedback pairs. With a shared head the retriever indexes every document, but a
    deployment only trains on what it holds."""
    examples = retriever.training_examples(list(feedback))
    if own_doc_ids is None:
        return examples
    own = set(own_doc_ids)
    own_rows = {row for row, doc in enumerate(retriever.documents) if doc.id in own}
    return [(text, row) for text, row in examples if row in own_rows]


def pairs_to_eval(pairs: Sequence[Pair]) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Queries and qrels dicts from (query, doc_id) pairs (one synthetic query id per pair)."""
    queries = {f"q{i}": q for i, (q, _) in enumerate(pairs)}
    qrels = {f"q{i}": {d: 1} for i, (_, d) in enumerate(pairs)}
    return queries, qrels


def quality(retriever: ClassifierRetriever, pairs: Sequence[Pair]) -> dict[str, float]:
    """R@1, R@5, R@10, MRR@10, nDCG@10 of ``retriever`` on held-out pairs (empty: zeros)."""
    if not pairs:
        return {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "MRR@10": 0.0, "nDCG@10": 0.0}
    queries, qrels = pairs_to_eval(pairs)
    return evaluate(retriever, queries, qrels)


def read_pairs(path: str | Path) -> list[Pair]:
    """A JSONL feedback file: one ``{"query": ..., "doc_id": ...}`` object per line."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, Mapping) or not isinstance(row.get("query"), str) or "doc_id" not in row:
                raise ValueError(f"{path}:{line_no}: expected an object with 'query' and 'doc_id'")
            pairs.append((row["query"], str(row["doc_id"])))
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for query, doc_id in pairs:
            handle.write(json.dumps({"query": query, "doc_id": doc_id}, ensure_ascii=False) + "\n")


def doc_ids_digest(documents: Iterable[Document]) -> str:
    """Identity of a document-id space (ids in head-row order): shared heads need the same one."""
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.id.encode())
        digest.update(b"\0")
    return digest.hexdigest()
