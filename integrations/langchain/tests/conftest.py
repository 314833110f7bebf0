"""Fixtures for langchain-softcar: one tiny random encoder per session, a small real-text corpus.

The test modules have unique names and no ``__init__.py`` so they coexist with the core's
``tests`` package when the whole repository is collected from its root.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from softcar import ClassifierRetriever as CoreRetriever  # noqa: E402
from softcar import TrainConfig  # noqa: E402
from softcar.testing import make_tiny_encoder  # noqa: E402

# Short passages on distinct topics, adapted from the Python documentation's FAQ.
TEXTS = {
    "indent": "Python uses indentation for grouping statements. There are no begin and end brackets.",
    "float": "Floating point numbers are stored in binary, so decimal fractions like 0.1 are not exact.",
    "strings": "Strings are immutable in Python, which lets them be used as dictionary keys.",
    "self": "The self parameter is explicit because methods are ordinary functions that receive the instance.",
    "gil": "The global interpreter lock lets only one thread execute Python bytecode at a time.",
    "lambda": "Lambda expressions cannot contain statements because statements cannot nest in expressions.",
}
FAST = TrainConfig(epochs=1, batch_size=8, pseudo_queries_per_document=2, show_progress=False)


@pytest.fixture
def texts() -> dict[str, str]:
    return dict(TEXTS)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_encoder(tmp_path_factory.mktemp("lc-tiny-bert"), "bert")


@pytest.fixture(scope="session")
def shared_core(tiny_encoder: str) -> CoreRetriever:
    """Fitted once; tests that mutate it (update/add) must build their own."""
    docs = [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in TEXTS.items()]
    return CoreRetriever(tiny_encoder, config=FAST).fit(docs)


@pytest.fixture
def fresh_core(tiny_encoder: str) -> CoreRetriever:
    docs = [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in TEXTS.items()]
    return CoreRetriever(tiny_encoder, config=FAST).fit(docs)
