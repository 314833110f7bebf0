"""An approximate nearest-neighbour index over the classifier head's rows (faiss), for large corpora.

Below ``ScoringConfig.ann_threshold`` head rows, retrieval is the exact matrix product over every
row and this module is not used. Above it, the index only *proposes* candidate documents (its
top ``ann_candidates`` rows by inner product); :func:`rescore` then scores those candidates
exactly with the same :func:`softcar.scoring.combine` as the exact path, so the ANN can only
miss a document, never mis-score one.

BM25 fusion z-standardises the soft scores over *all* documents. Their mean and variance are
exact without scoring every row: ``mean_i(q·w_i) = q·mean(W)`` and
``mean_i((q·w_i)²) = qᵀ(WᵀW/N)q`` (``O(d²)`` per query, from statistics kept with the index),
corrected on the few documents whose score question rows change. The lexical z-score uses
BM25's scores over all documents, as on the exact path.

The index is saved with the checkpoint in faiss' own binary format (no pickle), checksummed
like every checkpoint file, and carries a SHA-256 of the head rows it was built from: an index
file that does not match the head is refused (:class:`~softcar.errors.IndexMismatchError`).
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softcar.config import ScoringConfig
from softcar.errors import CorruptCheckpointError, IndexMismatchError
from softcar.scoring import Calibration, combine

logger = logging.getLogger(__name__)

INDEX_FILE = "head_index.faiss"
STATS_FILE = "head_index_stats.safetensors"


def _faiss() -> Any:
    """faiss is imported lazily: small corpora (the exact path) never need it."""
    import faiss

    return faiss


def head_fingerprint(rows: torch.Tensor) -> str:
    """SHA-256 of the head rows (float32, row-major): ties an index file to the head it indexes."""
    data = rows.detach().cpu().float().contiguous().numpy()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    for start in range(0, len(data), 65536):  # chunks: no second copy of a large head
        digest.update(data[start : start + 65536].tobytes())
    return digest.hexdigest()


@dataclass
class RowStatistics:
    """``sum(W)`` and ``WᵀW`` in float64: exact mean / variance of ``q·W`` over all rows."""

    total: torch.Tensor
    gram: torch.Tensor
    count: int

    @classmethod
    def of(cls, rows: torch.Tensor) -> RowStatistics:
        stats = cls(
            torch.zeros(rows.shape[1], dtype=torch.float64),
            torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64),
            0,
        )
        stats.add(rows)
        return stats

    def add(self, rows: torch.Tensor, chunk: int = 65536) -> None:
        for part in rows.detach().cpu().split(chunk):
            part64 = part.double()
            self.total += part64.sum(dim=0)
            self.gram += part64.T @ part64
        self.count += int(rows.shape[0])

    def moments(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i q·w_i, sum_i (q·w_i)²)`` per query, float64."""
        q = queries.detach().cpu().double()
        return q @ self.total, ((q @ self.gram) * q).sum(dim=1)


class HeadIndex:
    """faiss index over head rows (inner product): ``"ivf"`` (inverted lists) or ``"hnsw"`` (graph).

    Remembers which head tensor (and which in-place version of it) it was built from, so a
    retriever notices when training moved the rows and rebuilds it.
    """

    def __init__(
        self, index: Any, stats: RowStatistics | None, config: ScoringConfig, fingerprint: str | None = None
    ) -> None:
        self.index = index
        self._stats = stats
        self.kind = config.ann_kind
        self._fingerprint = fingerprint
        self._source: weakref.ref[torch.Tensor] | None = None
        self._source_version = -1
        self.configure(config)
        self.build_seconds = 0.0
        """Wall time of the last build (for benchmarks)."""

    # ------------------------------------------------------------------ building
    @property
    def stats(self) -> RowStatistics:
        """The row statistics that serving's score standardisation needs."""
        if self._stats is None:
            raise RuntimeError("this HeadIndex was built without row statistics (statistics=False: mining only)")
        return self._stats

    @classmethod
    def build(cls, rows: torch.Tensor, config: ScoringConfig, *, statistics: bool = True) -> HeadIndex:
        """Index ``rows`` ``[N, d]`` (float32 copies; the head itself is untouched).

        ``statistics=False`` skips the row statistics (a ``d × d`` float64 Gram matrix over every
        row, as costly as the index itself at a million rows) for an index that only proposes
        candidates, such as :class:`IndexMiner`'s.
        """
        faiss = _faiss()
        start = time.perf_counter()
        data = np.ascontiguousarray(rows.detach().cpu().float().numpy())
        count, dim = data.shape
        storage = {"float16": faiss.ScalarQuantizer.QT_fp16, "bfloat16": faiss.ScalarQuantizer.QT_bf16}
        quantized = storage.get(config.ann_storage)
        sample = data
        if config.ann_kind == "hnsw":
            if quantized is None:
                index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexHNSWSQ(dim, quantized, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.hnsw_ef_construction
        else:
            lists = max(1, min(config.ivf_lists or int(np.sqrt(count)), count // 39 or 1))
            coarse = faiss.IndexFlatIP(dim)
            if quantized is None:
                index = faiss.IndexIVFFlat(coarse, dim, lists, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFScalarQuantizer(coarse, dim, lists, quantized, faiss.METRIC_INNER_PRODUCT)
            if count > 64 * lists:  # k-means on a sample: 64 rows per list keep the build fast
                sample = data[np.sort(np.random.default_rng(0).choice(count, 64 * lists, replace=False))]
        if not index.is_trained:
            index.train(sample)
        index.add(data)
        self = cls(index, RowStatistics.of(rows) if statistics else None, config)
        self.build_seconds = time.perf_counter() - start
        logger.info("built a %s index over %d head rows in %.1f s", config.ann_kind, count, self.build_seconds)
        return self

    def configure(self, config: ScoringConfig) -> None:
        """Apply the search-time settings (``hnsw_ef_search`` / ``ivf_probes``)."""
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(config.hnsw_ef_search, config.ann_candidates)
        else:
            lists = int(_faiss().extract_index_ivf(self.index).nlist)
            self.index.nprobe = min(lists, config.ivf_probes or max(32, lists // 8))

    def add(self, rows: torch.Tensor) -> None:
        """Append new head rows (``add_documents``): both index kinds support adding in place."""
        self.index.add(np.ascontiguousarray(rows.detach().cpu().float().numpy()))
        if self._stats is not None:
            self._stats.add(rows)
        self._fingerprint = None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def nbytes(self) -> int:
        """Memory of the index's own structures: stored rows (codes), IVF centroids and ids,
        HNSW links; the float64 statistics (``d²``) included where it keeps them."""
        faiss = _faiss()
        stored = self.index if self.kind == "ivf" else faiss.downcast_index(self.index.storage)
        total = int(self.index.ntotal) * int(stored.code_size)
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            total += int(ivf.nlist) * int(ivf.d) * 4 + int(self.index.ntotal) * 8
        else:
            total += int(self.index.hnsw.neighbors.size()) * 4 + int(self.index.hnsw.levels.size()) * 4
        if self._stats is None:
            return total
        return total + int(self._stats.gram.numel() + self._stats.total.numel()) * 8

    # ------------------------------------------------------------------ staleness
    def bind(self, weight: torch.Tensor) -> None:
        """Record ``weight`` (the head parameter) as the rows this index reflects."""
        self._source = weakref.ref(weight)
        self._source_version = int(weight._version)

    def matches(self, weight: torch.Tensor) -> bool:
        """Whether ``weight`` is the tensor the index was built from, unchanged since (cheap)."""
        source = self._source() if self._source is not None else None
        return source is weight and int(weight._version) == self._source_version and len(self) == weight.shape[0]

    # ------------------------------------------------------------------ search
    def candidates(self, queries: torch.Tensor, count: int) -> torch.Tensor:
        """Row ids ``[len(queries), count]`` of the index's top rows (``-1`` pads a short list)."""
        if self.kind == "ivf":
            # faiss spreads a search over queries by default, so one query ran on one core. With
            # fewer queries than threads, spread it over the probed lists instead (measured at 1M
            # rows, 125 probes, 2 threads: 9.0 → 6.5 ms per query, float32 lists).
            ivf = _faiss().extract_index_ivf(self.index)
            ivf.parallel_mode = 1 if len(queries) < _faiss().omp_get_max_threads() else 0
        _, ids = self.index.search(np.ascontiguousarray(queries.detach().cpu().float().numpy()), min(count, len(self)))
        return torch.from_numpy(ids.astype(np.int64))

    # ------------------------------------------------------------------ persistence
    def fingerprint(self, rows: torch.Tensor) -> str:
        if self._fingerprint is None:
            self._fingerprint = head_fingerprint(rows)
        return self._fingerprint

    def save(self, folder: Path, rows: torch.Tensor) -> dict[str, Any]:
        """Write the index (faiss format) and its statistics; return the manifest entry."""
        from softcar.persistence import write_tensors

        _faiss().write_index(self.index, str(folder / INDEX_FILE))
        write_tensors(folder / STATS_FILE, {"total": self.stats.total, "gram": self.stats.gram})
        return {"kind": self.kind, "rows": len(self), "fingerprint": self.fingerprint(rows)}

    @classmethod
    def load(cls, folder: Path, entry: dict[str, Any], rows: torch.Tensor, config: ScoringConfig) -> HeadIndex:
        """Read an index saved by :meth:`save`; it must index exactly ``rows``."""
        from softcar.persistence import read_tensors

        try:
            kind, count, fingerprint = str(entry["kind"]), int(entry["rows"]), str(entry["fingerprint"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{folder}: invalid head_index entry in the manifest: {exc}") from exc
        if count != rows.shape[0]:
            raise IndexMismatchError(f"{folder / INDEX_FILE}: the index holds {count} rows, the head {rows.shape[0]}")
        actual = head_fingerprint(rows)
        if fingerprint != actual:
            raise IndexMismatchError(
                f"{folder / INDEX_FILE}: built from other head rows "
                f"(fingerprint {fingerprint[:12]}…, the head's is {actual[:12]}…)"
            )
        try:
            index = _faiss().read_index(str(folder / INDEX_FILE))
        except RuntimeError as exc:
            raise CorruptCheckpointError(f"{folder / INDEX_FILE} is not a readable faiss index: {exc}") from exc
        if int(index.ntotal) != count or int(index.d) != rows.shape[1]:
            raise IndexMismatchError(
                f"{folder / INDEX_FILE}: {index.ntotal} vectors of dimension {index.d}, head is {tuple(rows.shape)}"
            )
        tensors = read_tensors(folder / STATS_FILE)
        if "total" not in tensors or "gram" not in tensors or tuple(tensors["gram"].shape) != (rows.shape[1],) * 2:
            raise CorruptCheckpointError(f"{folder / STATS_FILE}: missing or misshapen row statistics")
        stats = RowStatistics(tensors["total"].double(), tensors["gram"].double(), count)
        self = cls(index, stats, config.model_copy(update={"ann_kind": kind}), fingerprint)
        return self


def rescore(
    queries: torch.Tensor,
    head: torch.Tensor,
    candidates: torch.Tensor,
    question_best: torch.Tensor | None,
    lexical: torch.Tensor | None,
    calibration: Calibration,
    stats: RowStatistics,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact final scores of the candidate documents, then the top ``k`` of them.

    ``candidates`` ``[n, C]`` row ids (``-1``: none) from the index; documents with question rows
    (finite ``question_best``) and, with fusion on, BM25's top ``C`` join them. ``question_best``
    and ``lexical`` are ``[n, N]`` as on the exact path. Scores equal the exact path's
    :func:`~softcar.scoring.combine` on those documents (up to float rounding).
    """
    n = queries.shape[0]
    fused = calibration.hybrid_weight > 0 and lexical is not None
    values, rows = [], []
    for i in range(n):
        q = queries[i : i + 1]
        parts = [candidates[i][candidates[i] >= 0]]
        lex_values: torch.Tensor | None = None
        asked = None
        if question_best is not None:
            asked = torch.isfinite(question_best[i]).nonzero().flatten().cpu()
            parts.append(asked)
        if fused:
            assert lexical is not None
            # BM25 is zero for every document without a query term: its top documents and its
            # moments come from the few non-zero scores (O(matches), not O(N) per query).
            lex_rows = torch.nonzero(lexical[i], as_tuple=True)[0]
            lex_values = lexical[i, lex_rows].double()
            top_lexical = torch.topk(lex_values, min(candidates.shape[1], len(lex_rows))).indices
            parts.append(lex_rows[top_lexical].cpu())
        cand = torch.unique(torch.cat(parts))
        soft = q @ head[cand.to(head.device)].T.to(q)
        best = question_best[i : i + 1, cand.to(question_best.device)] if question_best is not None else None
        scores = combine(soft, best, None, calibration)
        if fused:
            assert lexical is not None
            assert lex_values is not None
            alpha = calibration.hybrid_weight
            documents = lexical.shape[1]
            lex_mean = float(lex_values.sum()) / documents
            lex_var = max(float((lex_values**2).sum()) - documents * lex_mean**2, 0.0) / max(documents - 1, 1)
            lex_z = (lexical[i, cand.to(lexical.device)].double() - lex_mean) / max(lex_var**0.5, 1e-6)
            lex_z = lex_z.to(scores.device)
            best_row = question_best[i : i + 1] if question_best is not None else None
            mean, std = _soft_moments(q, head, asked, best_row, calibration, stats)
            scores = (alpha * lex_z + (1 - alpha) * (scores.double()[0] - mean) / std).float()[None]
        top = torch.topk(scores[0], min(k, len(cand)))
        values.append(top.values.cpu())
        rows.append(cand[top.indices.cpu()])
    return torch.stack(values), torch.stack(rows)


def _soft_moments(
    q: torch.Tensor,
    head: torch.Tensor,
    asked: torch.Tensor | None,
    question_best: torch.Tensor | None,
    calibration: Calibration,
    stats: RowStatistics,
) -> tuple[float, float]:
    """Exact mean and (unbiased) std over all documents of the pre-fusion score (see module docs).

    ``question_best`` is this query's ``[1, N]`` row; ``asked`` the documents where it is finite.
    """
    first, second = stats.moments(q)
    s1, s2 = float(first[0]), float(second[0])
    if asked is not None and len(asked) and question_best is not None:
        # Question rows change the pre-fusion score only on the documents that have them.
        soft = q @ head[asked.to(head.device)].T.to(q)
        adjusted = combine(soft, question_best[:, asked.to(question_best.device)], None, calibration).double()
        soft64 = soft.double()
        s1 += float(adjusted.sum() - soft64.sum())
        s2 += float((adjusted**2).sum() - (soft64**2).sum())
    count = stats.count
    mean = s1 / count
    variance = max((s2 - count * mean * mean) / max(count - 1, 1), 0.0)
    return mean, max(variance**0.5, 1e-6)


class IndexMiner:
    """Hard negatives for the sampled softmax from an ANN index over the head (large heads).

    Exact mining costs ``O(B · N · d)`` per step, which at a million rows is the whole step.
    This miner searches a faiss :class:`HeadIndex` instead and re-scores its ``candidates``
    exactly against the *current* rows, so only the proposal is approximate. Training moves
    few rows per step (sparse updates), so the index is rebuilt from the rows only every
    ``refresh_every`` calls (one call per training step) or when the head grows; with
    ``refresh_every`` equal to ``TrainConfig.checkpoint_every_steps`` the rebuilds fall on
    checkpoint boundaries, so a resumed fit mines from the same index as an uninterrupted one.
    """

    def __init__(self, config: ScoringConfig | None = None, refresh_every: int = 500, candidates: int = 64) -> None:
        # Hard negatives need not be the exact top-k: few probes keep mining cheap.
        self.config = config or ScoringConfig(ivf_probes=8, hnsw_ef_search=64)
        self.refresh_every, self.candidates = refresh_every, candidates
        self.index: HeadIndex | None = None
        self.builds = 0
        self._calls = 0

    @torch.no_grad()
    def __call__(self, queries: torch.Tensor, head: torch.Tensor, k: int) -> torch.Tensor:
        if self.index is None or self._calls % self.refresh_every == 0 or len(self.index) != head.shape[0]:
            self.index = HeadIndex.build(head, self.config, statistics=False)
            self.builds += 1
        self._calls += 1
        found = self.index.candidates(queries, max(k, self.candidates)).to(head.device)
        valid = found >= 0
        rows = found.clamp(min=0)
        scores = torch.einsum("bd,bcd->bc", queries, head[rows].to(queries.dtype))
        scores = scores.masked_fill(~valid.to(scores.device), -torch.inf)
        top = torch.topk(scores, min(k, rows.shape[1]), dim=1).indices
        return rows.gather(1, top)
