"""Checkpoints: safetensors + JSON, identical rankings after load, atomic saves, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softcar import BM25Retriever, ClassifierRetriever, InnerProductRetriever, load_retriever
from softcar.errors import CheckpointNotFoundError, CorruptCheckpointError, EncoderMismatchError, NotFittedError
from softcar.persistence import MANIFEST
from tests.conftest import FAST
from tests.test_retriever import QUESTIONS, ranking


def test_save_load_identical_rankings(fitted: ClassifierRetriever, tmp_path: Path) -> None:
    fitted.save(tmp_path / "model")
    loaded = ClassifierRetriever.load(tmp_path / "model")
    assert ranking(loaded) == ranking(fitted)
    assert loaded.documents == fitted.documents
    assert loaded.config == fitted.config
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "documents.jsonl",
        "questions.jsonl",
        "questions.safetensors",
        "softcar.json",
        "weights.safetensors",
    ]


def test_no_pickle_in_checkpoint(fitted: ClassifierRetriever, tmp_path: Path) -> None:
    fitted.save(tmp_path / "model")
    for file in (tmp_path / "model").iterdir():
        data = file.read_bytes()
        assert not data.startswith(b"\x80"), f"{file.name} looks like a pickle"
        assert b"PK\x03\x04" not in data[:4], f"{file.name} looks like a torch zip"
    manifest = json.loads((tmp_path / "model" / MANIFEST).read_text())
    assert manifest["kind"] == "classifier" and len(manifest["encoder"]["fingerprint"]) == 64


def test_overwrite_keeps_only_new(fitted: ClassifierRetriever, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    fitted.add_documents(["brand new document about decorators"])
    fitted.save(tmp_path / "m")
    assert len(ClassifierRetriever.load(tmp_path / "m").documents) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp or backup folders left


def test_crash_mid_save_keeps_previous(
    fitted: ClassifierRetriever, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted.save(tmp_path / "m")
    before = ranking(ClassifierRetriever.load(tmp_path / "m"))
    fitted.add_documents(["another document"])

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("simulated crash while writing")

    monkeypatch.setattr("softcar.base.write_documents", crash)
    with pytest.raises(KeyboardInterrupt):
        fitted.save(tmp_path / "m")
    monkeypatch.undo()
    reloaded = ClassifierRetriever.load(tmp_path / "m")
    assert len(reloaded.documents) == 6 and ranking(reloaded) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        ClassifierRetriever.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="softcar.json"):
        ClassifierRetriever.load(tmp_path / "empty")
    with pytest.raises(OSError):
        load_retriever(tmp_path / "empty")


def test_corrupted_weights(fitted: ClassifierRetriever, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        ClassifierRetriever.load(tmp_path / "m")


def test_corrupted_manifest(fitted: ClassifierRetriever, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    (tmp_path / "m" / MANIFEST).write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="JSON"):
        ClassifierRetriever.load(tmp_path / "m")


def test_wrong_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / MANIFEST).write_text(json.dumps({"hello": "world"}))
    with pytest.raises(CorruptCheckpointError, match="not a softcar checkpoint"):
        ClassifierRetriever.load(tmp_path / "m")
    (tmp_path / "f").write_text("a file")
    with pytest.raises(CheckpointNotFoundError):
        ClassifierRetriever.load(tmp_path / "f")


def test_wrong_kind(tmp_path: Path, corpus: list) -> None:
    BM25Retriever().fit(corpus).save(tmp_path / "bm25")
    with pytest.raises(CorruptCheckpointError, match="'bm25'"):
        ClassifierRetriever.load(tmp_path / "bm25")


def test_encoder_mismatch(fitted: ClassifierRetriever, tmp_path: Path, other_bert: str) -> None:
    fitted.save(tmp_path / "m")
    with pytest.raises(EncoderMismatchError, match="different base encoder"):
        ClassifierRetriever.load(tmp_path / "m", encoder=other_bert)


def test_save_unfitted(tiny_bert: str, tmp_path: Path) -> None:
    with pytest.raises(NotFittedError):
        ClassifierRetriever(tiny_bert, config=FAST).save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_baselines_round_trip(tiny_bert: str, corpus: list, tmp_path: Path) -> None:
    for name, retriever in {"ip": InnerProductRetriever(tiny_bert), "bm25": BM25Retriever()}.items():
        retriever.fit(corpus).save(tmp_path / name)
        loaded = load_retriever(tmp_path / name)
        assert type(loaded) is type(retriever)
        assert ranking(loaded) == ranking(retriever)
    assert isinstance(load_retriever(tmp_path / "ip"), InnerProductRetriever)


def test_load_retriever_dispatches(fitted: ClassifierRetriever, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    assert isinstance(load_retriever(tmp_path / "m"), ClassifierRetriever)
    assert [h.document.id for h in load_retriever(tmp_path / "m").retrieve(QUESTIONS[0], k=3)] == [
        h.document.id for h in fitted.retrieve(QUESTIONS[0], k=3)
    ]


def test_documents_file_invalid_utf8_on_first_line(fitted: ClassifierRetriever, tmp_path: Path) -> None:
    """Regression: a first line that is not UTF-8 raised UnboundLocalError, not the typed error."""
    from softcar.persistence import read_documents

    bad = tmp_path / "documents.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "\xff\xfe"}\n')
    with pytest.raises(CorruptCheckpointError, match="line 1"):
        read_documents(bad)


@pytest.mark.parametrize("kind", ["bm25", "inner_product", "classifier"])
def test_load_retriever_accepts_device_for_every_kind(kind: str, tiny_bert: str, tmp_path: Path) -> None:
    """Regression: ``load_retriever(path, device=...)`` raised TypeError for baseline checkpoints."""
    from tests.conftest import CORPUS

    build = {
        "bm25": lambda: BM25Retriever(),
        "inner_product": lambda: InnerProductRetriever(tiny_bert, show_progress=False),
        "classifier": lambda: ClassifierRetriever(tiny_bert, config=FAST),
    }[kind]
    original = build().fit(CORPUS)
    original.save(tmp_path / kind)
    loaded = load_retriever(tmp_path / kind, device="cpu", show_progress=False)
    assert type(loaded) is type(original)
    # Fitted on a GPU where there is one and loaded on the CPU: the same documents in the same
    # order, the scores equal up to the devices' float rounding.
    got, want = ranking(loaded), ranking(original)
    assert [[doc for doc, _ in hits] for hits in got] == [[doc for doc, _ in hits] for hits in want]
    assert [s for hits in got for _, s in hits] == pytest.approx([s for hits in want for _, s in hits], abs=1e-3)
    with pytest.raises(TypeError, match="unexpected options"):
        load_retriever(tmp_path / kind, colour="blue")
