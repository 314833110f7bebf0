"""Datasets: BEIR-format folders, plain JSONL corpora, and the demo set shipped in the package."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from softcar.documents import Document, coerce_documents
from softcar.errors import DatasetError
from softcar.persistence import read_jsonl

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]


@dataclass
class BeirDataset:
    """A BEIR folder in memory: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""

    corpus: list[Document]
    queries: dict[str, str]
    qrels: dict[str, Qrels] = field(default_factory=dict)

    def split(self, name: str) -> tuple[dict[str, str], Qrels]:
        """The queries and qrels of one split (only queries that have judgements)."""
        if name not in self.qrels:
            raise DatasetError(f"dataset has no split {name!r}; available: {sorted(self.qrels)}")
        qrels = self.qrels[name]
        missing = [q for q in qrels if q not in self.queries]
        if missing:
            raise DatasetError(f"split {name!r} judges unknown query ids, e.g. {missing[0]!r}")
        return {q: self.queries[q] for q in qrels}, qrels

    def training_pairs(self, name: str = "train") -> list[tuple[str, str]]:
        """``(query_text, doc_id)`` pairs of a split, for ``fit(..., queries=...)``."""
        queries, qrels = self.split(name)
        return [(queries[q], d) for q, docs in qrels.items() for d, rel in docs.items() if rel > 0]


def load_jsonl_documents(path: str | os.PathLike[str]) -> list[Document]:
    """A JSONL corpus: one ``{"id"|"_id", "text", "title"?, "metadata"?}`` object per line."""
    return coerce_documents(read_jsonl(Path(path), DatasetError))


def load_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            for line_no, row in enumerate(reader, 1):
                if not row or (line_no == 1 and row[0] == "query-id"):
                    continue
                if len(row) < 3:
                    raise DatasetError(f"{path}: line {line_no} needs query-id, corpus-id, score")
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    except ValueError as exc:
        raise DatasetError(f"{path}: bad score: {exc}") from exc
    return qrels


def load_beir(path: str | os.PathLike[str], *, duplicate_ids: Literal["error", "keep_first"] = "error") -> BeirDataset:
    """Load a BEIR-format folder; every split under ``qrels/`` is read.

    A corpus or query file that repeats an id is an error (``DuplicateDocumentIdError`` /
    ``DatasetError``); ``duplicate_ids="keep_first"`` keeps the first occurrence of each id
    instead and logs how many were dropped (real exports sometimes repeat one).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"{str(folder)!r} is not a folder")
    rows = read_jsonl(folder / "corpus.jsonl", DatasetError)
    query_rows = read_jsonl(folder / "queries.jsonl", DatasetError)
    if duplicate_ids == "keep_first":
        rows, query_rows = _first_of_each_id(rows, "corpus"), _first_of_each_id(query_rows, "queries")
    corpus = coerce_documents(rows)
    queries: dict[str, str] = {}
    for row in query_rows:
        if "_id" not in row or "text" not in row:
            raise DatasetError(f"{folder / 'queries.jsonl'}: every query needs '_id' and 'text'")
        if str(row["_id"]) in queries:
            raise DatasetError(f"{folder / 'queries.jsonl'}: duplicate query id {row['_id']!r}")
        queries[str(row["_id"])] = str(row["text"])
    qrels = {p.stem: load_qrels(p) for p in sorted((folder / "qrels").glob("*.tsv"))}
    known = {d.id for d in corpus}
    for split, judgements in qrels.items():
        for qid, docs in judgements.items():
            unknown = set(docs) - known
            if unknown:
                raise DatasetError(f"split {split!r}: query {qid!r} judges unknown document {sorted(unknown)[0]!r}")
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


def _first_of_each_id(rows: list[dict], what: str) -> list[dict]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = str(row.get("_id", row.get("id")))
        if key not in seen:
            seen.add(key)
            kept.append(row)
    if len(kept) < len(rows):
        logger.warning("%s: dropped %d rows that repeat an earlier id", what, len(rows) - len(kept))
    return kept


def packaged_dataset_path(name: str = "chatterbot_qa") -> Path:
    """Folder of a dataset shipped inside the package (see ``softcar/data/<name>/README.md``)."""
    folder = Path(__file__).resolve().parent / "data" / name
    if not (folder / "corpus.jsonl").is_file():
        raise DatasetError(f"no packaged dataset named {name!r}")
    return folder
