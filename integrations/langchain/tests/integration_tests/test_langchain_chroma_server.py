"""softcar served from a real Chroma server (``chroma run`` on 127.0.0.1, started by the test).

Embeddings are supplied by softcar (``SoftcarEmbeddings``), so Chroma's default ONNX embedding
model is never loaded or downloaded; telemetry is off.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import softcar
from langchain_softcar import SoftcarEmbeddings, SoftcarVectorIndex

chromadb = pytest.importorskip("chromadb")
langchain_chroma = pytest.importorskip("langchain_chroma")

TEXTS = {
    "indent": "Python uses indentation for grouping statements. There are no begin and end brackets.",
    "float": "Floating point numbers are stored in binary, so decimal fractions like 0.1 are not exact.",
    "strings": "Strings are immutable in Python, which lets them be used as dictionary keys.",
    "self": "The self parameter is explicit because methods are ordinary functions that receive the instance.",
    "gil": "The global interpreter lock lets only one thread execute Python bytecode at a time.",
    "lambda": "Lambda expressions cannot contain statements because statements cannot nest in expressions.",
    "walrus": "Assignment expressions with := bind a name inside an expression, for example in a while loop.",
    "gc": "CPython frees memory by reference counting and a cycle detector collects reference cycles.",
}
PAIRS = [("only one thread runs bytecode", "gil"), ("why is 0.1 odd", "float"), ("what does := do", "walrus")]
QUERIES = ["why are threads slow", "0.1 is not exact", "immutable strings", "memory of cycles", "the := operator"]
# holdout_fraction=0: no held-out guard, so the trained rows are kept (their norms differ).
FAST = softcar.TrainConfig(
    epochs=1, batch_size=8, pseudo_queries_per_document=2, holdout_fraction=0.0, show_progress=False
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chroma_executable() -> str:
    local = Path(sys.executable).with_name("chroma")
    found = str(local) if local.exists() else shutil.which("chroma")
    if found is None:
        pytest.skip("the chroma CLI (chromadb package) is not installed")
    return found


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = _free_port()
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    path = tmp_path_factory.mktemp("chroma-data")
    log = open(path.parent / "chroma.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [_chroma_executable(), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
                break
            except Exception as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = (path.parent / "chroma.log").read_text()
                    raise RuntimeError(f"chroma server did not start: {log_text}") from exc
                time.sleep(0.3)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_chroma_server_matches_in_process_search(tiny_encoder: str, chroma_server: tuple[str, int]) -> None:
    host, port = chroma_server
    scoring = softcar.ScoringConfig(hybrid_weight=0.0, question_offset=0.05)
    core = softcar.ClassifierRetriever(tiny_encoder, config=FAST, scoring=scoring).fit(
        [{"id": k, "text": v} for k, v in TEXTS.items()], PAIRS
    )
    client = chromadb.HttpClient(host=host, port=port, settings=chromadb.config.Settings(anonymized_telemetry=False))
    store = langchain_chroma.Chroma(
        collection_name="softcar",
        client=client,
        embedding_function=SoftcarEmbeddings(core),
        collection_metadata={"hnsw:space": "cosine"},
    )
    index = SoftcarVectorIndex(core, store)
    assert len(index.push()) == len(TEXTS) + len(PAIRS)
    assert client.get_collection("softcar").count() == len(TEXTS) + len(PAIRS)  # rows live in the server
    for query, expected in zip(QUERIES, core.retrieve_batch(QUERIES, k=len(TEXTS))):
        got = index.search(query, k=len(TEXTS))
        assert [h.document.id for h in got] == [h.document.id for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
