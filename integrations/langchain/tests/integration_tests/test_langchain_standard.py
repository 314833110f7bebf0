"""LangChain's own standard retriever suite (langchain-tests, pinned), on softcar and a baseline."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from langchain_softcar import ClassifierRetriever
from softcar import BM25Retriever


class TestSoftcarStandard(RetrieversIntegrationTests):
    """The default: a fitted softcar.ClassifierRetriever (tiny random encoder, so it is fast)."""

    @pytest.fixture(autouse=True)
    def _core(self, shared_core: Any) -> None:
        # Autouse fixtures run before `retriever`, which reads retriever_constructor_params.
        self.core = shared_core

    @property
    def retriever_constructor(self) -> type[ClassifierRetriever]:
        return ClassifierRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retriever": self.core, "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "why can't my threads run Python code in parallel?"


class TestBM25Standard(RetrieversIntegrationTests):
    """The adapter is generic over softcar.Retriever: the BM25 baseline passes the same suite."""

    @pytest.fixture(autouse=True)
    def _core(self, texts: dict[str, str]) -> None:
        self.core = BM25Retriever().fit([{"id": k, "text": v} for k, v in texts.items()])

    @property
    def retriever_constructor(self) -> type[ClassifierRetriever]:
        return ClassifierRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retriever": self.core, "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "Python threads and the interpreter lock"
