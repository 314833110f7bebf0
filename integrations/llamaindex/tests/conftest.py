"""Fixtures for llama-index-retrievers-softcar: a tiny random encoder per session, small corpus.

Test modules have unique names and no ``__init__.py`` so they coexist with the core's
``tests`` package when the whole repository is collected from its root.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from llama_index.core.schema import TextNode  # noqa: E402

from llama_index.retrievers.softcar import ClassifierRetriever  # noqa: E402
from softcar import TrainConfig  # noqa: E402
from softcar.testing import make_tiny_encoder  # noqa: E402

TEXTS = {
    "indent": "Python uses indentation for grouping statements. There are no begin and end brackets.",
    "float": "Floating point numbers are stored in binary, so decimal fractions like 0.1 are not exact.",
    "strings": "Strings are immutable in Python, which lets them be used as dictionary keys.",
    "self": "The self parameter is explicit because methods are ordinary functions that receive the instance.",
    "gil": "The global interpreter lock lets only one thread execute Python bytecode at a time.",
    "lambda": "Lambda expressions cannot contain statements because statements cannot nest in expressions.",
}
QUESTIONS = {
    "q-gil": ("why can't my threads run in parallel?", "gil"),
    "q-float": ("why is 0.1 not exact?", "float"),
    "q-strings": ("can I use a string as a dict key?", "strings"),
}


@pytest.fixture
def fast() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=8, pseudo_queries_per_document=2, show_progress=False)


@pytest.fixture
def nodes() -> list[TextNode]:
    return [TextNode(id_=k, text=v, metadata={"topic": k}) for k, v in TEXTS.items()]


@pytest.fixture
def qa_dataset() -> dict:
    """The JSON shape of LlamaIndex's EmbeddingQAFinetuneDataset over ``nodes``."""
    return {
        "queries": {qid: q for qid, (q, _) in QUESTIONS.items()},
        "corpus": dict(TEXTS),
        "relevant_docs": {qid: [doc] for qid, (_, doc) in QUESTIONS.items()},
        "mode": "text",
    }


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_encoder(tmp_path_factory.mktemp("li-tiny-bert"), "bert")


@pytest.fixture(scope="session")
def shared_li(tiny_encoder: str) -> ClassifierRetriever:
    """Fitted once; tests that mutate state build their own with ``from_nodes``."""
    fast = TrainConfig(epochs=1, batch_size=8, pseudo_queries_per_document=2, show_progress=False)
    return ClassifierRetriever.from_nodes(
        [TextNode(id_=k, text=v, metadata={"topic": k}) for k, v in TEXTS.items()],
        similarity_top_k=3,
        encoder=tiny_encoder,
        config=fast,
    )
