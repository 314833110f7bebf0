"""Shared fixtures: tiny randomly initialised encoders and a small real-text corpus."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from softcar import ClassifierRetriever, Document, TrainConfig  # noqa: E402
from softcar.testing import make_tiny_encoder  # noqa: E402

# Short passages on distinct topics, adapted from the Python documentation's FAQ.
CORPUS = [
    Document(
        id="indent",
        text=(
            "Python uses indentation for grouping statements. There are no begin and end brackets, so "
            "the parser and the reader agree on grouping."
        ),
        metadata={"topic": "syntax"},
    ),
    Document(
        id="float",
        text=(
            "Floating point numbers are stored in binary, so decimal fractions like 0.1 cannot be "
            "represented exactly and arithmetic results look strange."
        ),
        metadata={"topic": "numbers"},
    ),
    Document(
        id="strings",
        text=(
            "Strings are immutable in Python. Immutability allows strings to be used as dictionary keys "
            "and makes their hash values cacheable."
        ),
        metadata={"topic": "types"},
    ),
    Document(
        id="self",
        text=(
            "The self parameter must be used explicitly in method definitions because methods are "
            "ordinary functions that receive the instance first."
        ),
        metadata={"topic": "classes"},
    ),
    Document(
        id="gil",
        text=(
            "The global interpreter lock lets only one thread execute Python bytecode at a time, which "
            "limits CPU parallelism with threads."
        ),
        metadata={"topic": "threads"},
    ),
    Document(
        id="lambda",
        text=(
            "Lambda expressions cannot contain statements because Python's syntax cannot nest "
            "statements inside expressions."
        ),
        metadata={"topic": "syntax"},
    ),
]

FAST = TrainConfig(epochs=1, batch_size=8, pseudo_queries_per_document=2, show_progress=False)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def other_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Same architecture as ``tiny_bert`` but other random weights: a 'different base encoder'."""
    return make_tiny_encoder(tmp_path_factory.mktemp("other-bert"), "bert", seed=1)


@pytest.fixture
def corpus() -> list[Document]:
    return list(CORPUS)


@pytest.fixture
def fitted(tiny_bert: str, corpus: list[Document]) -> ClassifierRetriever:
    return ClassifierRetriever(tiny_bert, config=FAST).fit(corpus)
