"""The ANN head index: exact re-scoring equals the exact path, staleness, round trip, mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from softcar import ClassifierRetriever, Document, ScoringConfig, TrainConfig
from softcar.errors import CorruptCheckpointError, IndexMismatchError, InvalidVectorsError
from softcar.head_index import INDEX_FILE, HeadIndex
from softcar.persistence import MANIFEST, read_tensors, sha256_file, write_tensors

FAST = TrainConfig(epochs=1, batch_size=8, pseudo_queries_per_document=2, show_progress=False)
QUERIES = [
    "why are threads slow",
    "decimal fractions are inexact",
    "can strings change",
    "why self in methods",
    "indentation grouping",
    "lambda statements",
]
PAIRS = [("only one thread runs bytecode", "gil"), ("why is 0.1 odd", "float")]


def _pair(tiny_bert: str, corpus: list[Document], **scoring: object) -> tuple[ClassifierRetriever, ClassifierRetriever]:
    """The same fitted retriever twice: exact path and ANN path (threshold 1)."""
    exact = ClassifierRetriever(tiny_bert, config=FAST, scoring=ScoringConfig(**scoring)).fit(corpus, PAIRS)
    ann = ClassifierRetriever(tiny_bert, config=FAST, scoring=ScoringConfig(ann_threshold=1, **scoring)).fit(
        corpus, PAIRS
    )
    return exact, ann


def _ranked(retriever: ClassifierRetriever, k: int) -> tuple[list[list[str]], torch.Tensor]:
    hits = retriever.retrieve_batch(QUERIES, k=k)
    return [[h.document.id for h in row] for row in hits], torch.tensor([[h.score for h in row] for row in hits])


@pytest.mark.parametrize(
    "scoring",
    [
        {"hybrid_weight": 0.0},  # soft scores only
        {"hybrid_weight": 0.3, "question_offset": 0.1},  # BM25 fusion + question rows
        {},  # calibrated
        {"hybrid_weight": 0.0, "ann_storage": "float16"},  # half-precision index, float32 re-scoring
        {"hybrid_weight": 0.2, "ann_kind": "hnsw", "ann_storage": "bfloat16"},
    ],
)
def test_ann_path_equals_exact_path(tiny_bert: str, corpus: list[Document], scoring: dict[str, object]) -> None:
    exact, ann = _pair(tiny_bert, corpus, **scoring)
    assert exact.head_index is None and ann.head_index is not None
    assert exact.calibration == ann.calibration
    ids_exact, scores_exact = _ranked(exact, len(corpus))
    ids_ann, scores_ann = _ranked(ann, len(corpus))
    assert ids_ann == ids_exact
    torch.testing.assert_close(scores_ann, scores_exact, atol=1e-4, rtol=1e-4)


def test_index_recall_on_clustered_rows() -> None:
    """HNSW candidates + exact re-scoring find the exact top 10 on 4,000 clustered unit rows."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(40, 64, generator=generator), dim=1)
    rows = centres.repeat_interleave(100, dim=0) + 0.35 * torch.randn(4000, 64, generator=generator) / 8
    rows = torch.nn.functional.normalize(rows, dim=1)
    queries = torch.nn.functional.normalize(rows[::40] + 0.1 * torch.randn(100, 64, generator=generator) / 8, dim=1)
    sizes = {}
    for kind, storage in (("hnsw", "float32"), ("ivf", "float32"), ("ivf", "float16"), ("hnsw", "bfloat16")):
        index = HeadIndex.build(rows, ScoringConfig(ann_kind=kind, ann_storage=storage))
        candidates = index.candidates(queries, 100)
        exact = torch.topk(queries @ rows.T, 10).indices
        hits = 0
        for i, cand in enumerate(candidates):
            cand = cand[cand >= 0]
            rescored = cand[torch.topk(queries[i] @ rows[cand].T, 10).indices]
            hits += len(set(rescored.tolist()) & set(exact[i].tolist()))
        recall = hits / (10 * len(queries))
        assert recall >= 0.99, (kind, storage, recall)
        sizes[(kind, storage)] = index.nbytes
    assert sizes[("ivf", "float16")] < 0.6 * sizes[("ivf", "float32")]  # half-precision rows
    assert sizes[("hnsw", "bfloat16")] < sizes[("hnsw", "float32")]


def test_index_follows_training_and_new_documents(tiny_bert: str, corpus: list[Document]) -> None:
    first = [d for d in corpus if d.id in {"gil", "float", "indent", "strings"}]
    exact, ann = _pair(tiny_bert, first, hybrid_weight=0.0)
    built = ann.head_index
    assert built is not None and len(built) == 4
    for retriever in (exact, ann):
        retriever.add_documents([d for d in corpus if d not in first])
    assert ann.head_index is built and len(built) == len(corpus)  # added in place
    for retriever in (exact, ann):
        retriever.update([("one thread at a time", "gil")], epochs=1)
    rebuilt = ann.head_index
    assert rebuilt is not None and rebuilt is not built  # training moved the rows: rebuilt
    assert rebuilt.matches(ann.model.head.weight)
    assert _ranked(ann, len(corpus))[0] == _ranked(exact, len(corpus))[0]


def test_index_round_trip(tiny_bert: str, corpus: list[Document], tmp_path: Path) -> None:
    _, ann = _pair(tiny_bert, corpus, hybrid_weight=0.2, question_offset=0.1)
    ann.save(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / MANIFEST).read_text())
    assert manifest["head_index"]["rows"] == len(corpus) and INDEX_FILE in manifest["files"]
    loaded = ClassifierRetriever.load(tmp_path / "ckpt", tiny_bert)
    index = loaded.head_index
    assert index is not None and index.build_seconds == 0.0  # read from the file, not rebuilt
    assert _ranked(loaded, len(corpus))[0] == _ranked(ann, len(corpus))[0]


def _rewrite(folder: Path, name: str, manifest_update: dict[str, object] | None = None) -> None:
    """Fix the manifest's checksum of ``name`` (a deliberate edit, not corruption)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = sha256_file(folder / name)
    manifest.update(manifest_update or {})
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_index_that_does_not_match_the_head_is_refused(tiny_bert: str, corpus: list[Document], tmp_path: Path) -> None:
    _, ann = _pair(tiny_bert, corpus, hybrid_weight=0.0)
    folder = tmp_path / "ckpt"
    ann.save(folder)
    before = (folder / INDEX_FILE).read_bytes()
    tensors = read_tensors(folder / "weights.safetensors")
    tensors["head.weight"] = tensors["head.weight"] * 1.5  # other head rows, same shape
    write_tensors(folder / "weights.safetensors", tensors)
    _rewrite(folder, "weights.safetensors")
    with pytest.raises(IndexMismatchError, match="fingerprint"):
        ClassifierRetriever.load(folder, tiny_bert)
    manifest = json.loads((folder / MANIFEST).read_text())
    _rewrite(folder, "weights.safetensors", {"head_index": {**manifest["head_index"], "rows": 99}})
    with pytest.raises(IndexMismatchError, match="99 rows"):
        ClassifierRetriever.load(folder, tiny_bert)
    assert (folder / INDEX_FILE).read_bytes() == before  # nothing overwritten


def test_unreadable_index_file_is_corruption(tiny_bert: str, corpus: list[Document], tmp_path: Path) -> None:
    _, ann = _pair(tiny_bert, corpus, hybrid_weight=0.0)
    folder = tmp_path / "ckpt"
    ann.save(folder)
    (folder / INDEX_FILE).write_bytes(b"not a faiss index")
    _rewrite(folder, INDEX_FILE)
    with pytest.raises(CorruptCheckpointError, match="faiss"):
        ClassifierRetriever.load(folder, tiny_bert)


def test_add_embedded_documents_equals_fit_without_training(tiny_bert: str, corpus: list[Document]) -> None:
    """Rows computed elsewhere (the scale path: no encoding in the call) serve like fit(epochs=0)."""
    frozen = TrainConfig(epochs=0, show_progress=False)
    fitted = ClassifierRetriever(tiny_bert, config=frozen).fit(corpus)
    added = ClassifierRetriever(tiny_bert, config=frozen)
    vectors = added.embed_documents([d.text for d in corpus])
    assert added.add_embedded_documents(corpus, vectors) == [d.id for d in corpus]
    ids_added, scores_added = _ranked(added, len(corpus))
    ids_fitted, scores_fitted = _ranked(fitted, len(corpus))
    assert ids_added == ids_fitted
    torch.testing.assert_close(scores_added, scores_fitted)
    with pytest.raises(InvalidVectorsError, match="shape"):
        added.add_embedded_documents([Document(id="x", text="more")], vectors)
    with pytest.raises(ValueError, match="NaN"):
        added.add_embedded_documents([Document(id="x", text="more")], torch.full((1, vectors.shape[1]), float("nan")))
    assert len(added) == len(corpus)  # nothing added by the failed calls
