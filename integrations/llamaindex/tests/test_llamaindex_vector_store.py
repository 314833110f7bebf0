"""softcar served through LlamaIndex's SimpleVectorStore: same top-k and scores as in-process search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from llama_index.core.schema import BaseNode
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQuery, VectorStoreQueryResult

import softcar
from llama_index.retrievers.softcar import SoftcarVectorIndex
from softcar.errors import VectorSearchUnsupportedError, VectorStoreError

TEXTS = {
    "indent": "Python uses indentation for grouping statements. There are no begin and end brackets.",
    "float": "Floating point numbers are stored in binary, so decimal fractions like 0.1 are not exact.",
    "strings": "Strings are immutable in Python, which lets them be used as dictionary keys.",
    "gil": "The global interpreter lock lets only one thread execute Python bytecode at a time.",
    "lambda": "Lambda expressions cannot contain statements because statements cannot nest in expressions.",
}
PAIRS = [("only one thread runs bytecode", "gil"), ("why is 0.1 odd", "float")]
QUERIES = ["why are threads slow", "0.1 is not exact", "immutable strings", "grouping by indent"]
# holdout_fraction=0: no held-out guard, so the trained rows are kept (their norms differ).
FAST = softcar.TrainConfig(
    epochs=1, batch_size=8, pseudo_queries_per_document=2, holdout_fraction=0.0, show_progress=False
)


@pytest.fixture(scope="module")
def core(tiny_encoder: str) -> softcar.ClassifierRetriever:
    scoring = softcar.ScoringConfig(hybrid_weight=0.0, question_offset=0.05)
    docs = [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in TEXTS.items()]
    return softcar.ClassifierRetriever(tiny_encoder, config=FAST, scoring=scoring).fit(docs, PAIRS)


def test_simple_vector_store_matches_in_process_search(core: softcar.ClassifierRetriever) -> None:
    index = SoftcarVectorIndex(core, SimpleVectorStore())
    assert len(index.push()) == len(TEXTS) + len(PAIRS)
    for query, expected in zip(QUERIES, core.retrieve_batch(QUERIES, k=len(TEXTS))):
        got = index.search(query, k=len(TEXTS))
        assert [h.document.id for h in got] == [h.document.id for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
    nodes = index.as_retriever(k=2).retrieve(QUERIES[0])
    assert [n.node.node_id for n in nodes] == [h.document.id for h in core.retrieve(QUERIES[0], k=2)]
    assert nodes[0].node.metadata["topic"] == nodes[0].node.node_id


class KeywordOnlyStore(BasePydanticVectorStore):
    """A real (tiny) store that answers keyword queries only: it cannot search by vector."""

    stores_text: bool = True
    nodes: list[Any] = []

    @property
    def client(self) -> Any:
        return None

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        self.nodes = [*self.nodes, *nodes]
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **kwargs: Any) -> None:
        self.nodes = [n for n in self.nodes if n.ref_doc_id != ref_doc_id]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.query_str is None:
            raise NotImplementedError("keyword search only")
        hits = [n for n in self.nodes if query.query_str in n.get_content()]
        return VectorStoreQueryResult(nodes=hits, ids=[n.node_id for n in hits])


def test_unusable_stores(core: softcar.ClassifierRetriever) -> None:
    with pytest.raises(VectorStoreError, match="SimpleDocumentStore"):
        SoftcarVectorIndex(core, SimpleDocumentStore())
    index = SoftcarVectorIndex(core, KeywordOnlyStore())
    index.push()
    with pytest.raises(VectorSearchUnsupportedError, match="KeywordOnlyStore cannot search by vector"):
        index.search("threads", k=2)
