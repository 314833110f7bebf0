"""The benchmark's datasets: corpus, original / reworded question splits, labelled pairs."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from softcar import Document, load_beir, packaged_dataset_path

BENCHMARKS = Path(__file__).resolve().parent.parent
FAQ_PATH = BENCHMARKS.parent.parent / "shared" / "data" / "python-faq"  # ../shared beside the repo
FAQ_REWORDED = BENCHMARKS / "data" / "python_faq_reworded.tsv"
DATASETS = ("chatterbot_qa", "python-faq")

Split = tuple[dict[str, str], dict[str, dict[str, int]]]
"""``(queries, qrels)``: what :func:`softcar.evaluate` takes."""


@dataclass
class BenchDataset:
    corpus: list[Document]
    original: Split
    reworded: Split
    train_pairs: list[tuple[str, str]]
    """Setting B's labelled ``(query, doc_id)`` pairs: the original questions."""

    def split(self, name: str) -> Split:
        return {"original": self.original, "reworded": self.reworded}[name]


def dataset_available(name: str) -> str | None:
    """None when usable, else why not."""
    if name not in DATASETS:
        return f"unknown dataset (known: {', '.join(DATASETS)})"
    if name == "python-faq" and not (FAQ_PATH / "corpus.jsonl").is_file():
        return f"{FAQ_PATH} is absent"
    return None


def _read_reworded(path: Path) -> Split:
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            queries[row["query-id"]] = row["text"]
            qrels[row["query-id"]] = {row["corpus-id"]: 1}
    return queries, qrels


def load_dataset(name: str, max_docs: int | None = None) -> BenchDataset:
    """One dataset, optionally cut to its first ``max_docs`` documents (and their questions)."""
    if name == "chatterbot_qa":
        ds = load_beir(packaged_dataset_path("chatterbot_qa"))
        data = BenchDataset(ds.corpus, ds.split("original"), ds.split("test"), ds.training_pairs("train"))
    elif name == "python-faq":
        ds = load_beir(FAQ_PATH)
        data = BenchDataset(ds.corpus, ds.split("test"), _read_reworded(FAQ_REWORDED), ds.training_pairs("test"))
    else:
        raise ValueError(f"unknown dataset {name!r}")
    if not max_docs:
        return data
    corpus = data.corpus[:max_docs]
    keep = {d.id for d in corpus}

    def restrict(split: Split) -> Split:
        queries, qrels = split
        kept = {q: docs for q, docs in qrels.items() if set(docs) <= keep}
        return {q: queries[q] for q in kept}, kept

    return BenchDataset(
        corpus, restrict(data.original), restrict(data.reworded), [(t, d) for t, d in data.train_pairs if d in keep]
    )


def eval_splits(setting: str) -> list[str]:
    """A: no labels, both kinds of question are unseen. B: the originals were trained on."""
    return ["original", "reworded"] if setting == "A" else ["reworded", "original"]


def split_label(setting: str, split: str) -> str:
    return "original (seen)" if setting == "B" and split == "original" else split
