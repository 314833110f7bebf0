"""BEIR loading and the ``softcar`` command line, end to end on a tiny encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from softcar.cli import app
from softcar.data import load_beir, load_jsonl_documents, packaged_dataset_path
from softcar.errors import DatasetError, DuplicateDocumentIdError
from tests.conftest import CORPUS

runner = CliRunner()


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for doc in CORPUS:
            f.write(json.dumps({"_id": doc.id, "title": "", "text": doc.text}) + "\n")
    questions = {
        "q1": ("why are strings immutable", "strings"),
        "q2": ("what is the GIL", "gil"),
        "q3": ("is 0.1 exact", "float"),
        "q4": ("explicit self", "self"),
    }
    with open(folder / "queries.jsonl", "w") as f:
        for qid, (text, _) in questions.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, ids in {"train": ["q1", "q2"], "test": ["q3", "q4"]}.items():
        with open(folder / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid in ids:
                f.write(f"{qid}\t{questions[qid][1]}\t1\n")
    return folder


def test_load_beir(beir: Path) -> None:
    dataset = load_beir(beir)
    assert len(dataset.corpus) == 6 and set(dataset.qrels) == {"train", "test"}
    assert dataset.training_pairs("train") == [("why are strings immutable", "strings"), ("what is the GIL", "gil")]
    with pytest.raises(DatasetError, match="no split 'dev'"):
        dataset.split("dev")


def test_bad_datasets(tmp_path: Path, beir: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        load_beir(tmp_path / "missing")
    (beir / "corpus.jsonl").write_text("{broken\n")
    with pytest.raises(DatasetError, match="line 1"):
        load_beir(beir)
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(DuplicateDocumentIdError):
        load_jsonl_documents(tmp_path / "dup.jsonl")


def test_unknown_doc_in_qrels(beir: Path) -> None:
    with open(beir / "qrels" / "test.tsv", "a") as f:
        f.write("q3\tghost\t1\n")
    with pytest.raises(DatasetError, match="'ghost'"):
        load_beir(beir)


def test_packaged_dataset_is_consistent() -> None:
    dataset = load_beir(packaged_dataset_path("chatterbot_qa"))
    assert len(dataset.corpus) > 200
    test_queries, test_qrels = dataset.split("test")
    train_queries, _ = dataset.split("train")
    assert not set(test_queries.values()) & set(train_queries.values())  # reworded, never the originals
    with pytest.raises(DatasetError):
        packaged_dataset_path("nope")


def test_cli_fit_query_eval(beir: Path, tmp_path: Path, tiny_bert: str) -> None:
    out = tmp_path / "model"
    result = runner.invoke(
        app, ["fit", str(beir), "--out", str(out), "--encoder", tiny_bert, "--epochs", "1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "2 labelled pairs" in result.output and (out / "softcar.json").is_file()

    result = runner.invoke(app, ["query", str(out), "what is the GIL", "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 3 and {"id", "score", "text"} <= set(hits[0])

    result = runner.invoke(app, ["eval", str(out), str(beir), "--json-out", str(tmp_path / "m.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["queries"] == 2 and 0.0 <= metrics["R@1"] <= 1.0 and metrics["p50_ms"] > 0

    result = runner.invoke(app, ["eval", "bm25", str(beir), "--quiet"])
    assert result.exit_code == 0 and "| bm25" in result.output


def test_cli_fit_plain_jsonl(tmp_path: Path, tiny_bert: str) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in CORPUS))
    result = runner.invoke(
        app, ["fit", str(docs), "--out", str(tmp_path / "m"), "--encoder", tiny_bert, "--epochs", "1", "-q"]
    )
    assert result.exit_code == 0, result.output


def test_cli_errors_are_clear(tmp_path: Path, beir: Path) -> None:
    result = runner.invoke(app, ["query", str(tmp_path / "nothing"), "hello"])
    assert result.exit_code == 2 and "no checkpoint folder" in result.output
    result = runner.invoke(app, ["query", str(tmp_path), "hello"])
    assert result.exit_code == 2 and "softcar.json is missing" in result.output
    result = runner.invoke(app, ["eval", "bm25", str(beir), "--split", "dev"])
    assert result.exit_code == 2 and "no split 'dev'" in result.output


@pytest.mark.parametrize("command", [[], ["fit"], ["query"], ["eval"], ["demo"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_jsonl_invalid_utf8_on_first_line(tmp_path: Path) -> None:
    """Regression: a first line that is not UTF-8 raised UnboundLocalError, not DatasetError."""
    from softcar import load_jsonl_documents
    from softcar.errors import DatasetError

    bad = tmp_path / "corpus.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match="line 1"):
        load_jsonl_documents(bad)


def test_beir_duplicate_ids_error_or_keep_first(tmp_path: Path) -> None:
    folder = tmp_path / "dup"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        '{"_id": "a", "text": "first"}\n{"_id": "a", "text": "second"}\n{"_id": "b", "text": "bee"}\n'
    )
    (folder / "queries.jsonl").write_text('{"_id": "q", "text": "which"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\ta\t1\n")
    with pytest.raises(DuplicateDocumentIdError, match="'a'"):
        load_beir(folder)
    data = load_beir(folder, duplicate_ids="keep_first")
    assert [(d.id, d.text) for d in data.corpus] == [("a", "first"), ("b", "bee")]
