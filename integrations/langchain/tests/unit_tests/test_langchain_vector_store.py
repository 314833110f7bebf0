"""softcar served through LangChain's InMemoryVectorStore: same top-k and scores as in-process search."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore

import softcar
from langchain_softcar import SoftcarEmbeddings, SoftcarVectorIndex
from softcar.errors import VectorSearchUnsupportedError, VectorStoreError

QUERIES = ["why are threads slow", "0.1 is not exact", "immutable strings", "explicit self", "grouping by indent"]
PAIRS = [("only one thread runs bytecode", "gil"), ("why is 0.1 odd", "float"), ("can strings change", "strings")]
TEXTS = {
    "indent": "Python uses indentation for grouping statements. There are no begin and end brackets.",
    "float": "Floating point numbers are stored in binary, so decimal fractions like 0.1 are not exact.",
    "strings": "Strings are immutable in Python, which lets them be used as dictionary keys.",
    "self": "The self parameter is explicit because methods are ordinary functions that receive the instance.",
    "gil": "The global interpreter lock lets only one thread execute Python bytecode at a time.",
    "lambda": "Lambda expressions cannot contain statements because statements cannot nest in expressions.",
}
# holdout_fraction=0: no held-out guard, so the trained rows are kept (their norms differ).
FAST = softcar.TrainConfig(
    epochs=1, batch_size=8, pseudo_queries_per_document=2, holdout_fraction=0.0, show_progress=False
)


@pytest.fixture(scope="module")
def core(tiny_encoder: str) -> softcar.ClassifierRetriever:
    docs = [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in TEXTS.items()]
    # Fusion off (the vector-store path has no BM25); question rows on with an offset.
    scoring = softcar.ScoringConfig(hybrid_weight=0.0, question_offset=0.05)
    return softcar.ClassifierRetriever(tiny_encoder, config=FAST, scoring=scoring).fit(docs, PAIRS)


def test_in_memory_store_matches_in_process_search(core: softcar.ClassifierRetriever) -> None:
    store = InMemoryVectorStore(SoftcarEmbeddings(core))
    index = SoftcarVectorIndex(core, store)
    ids = index.push()
    assert len(ids) == len(core.documents) + len(PAIRS)  # head rows + question rows
    norms = core.model.head.weight.detach().norm(dim=1)
    assert float(norms.max() - norms.min()) > 1e-3  # trained rows: cosine alone would rank differently
    for query, expected in zip(QUERIES, core.retrieve_batch(QUERIES, k=len(core.documents))):
        got = index.search(query, k=len(core.documents))
        assert [h.document.id for h in got] == [h.document.id for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
    docs = index.as_retriever(k=2).invoke(QUERIES[0])
    assert [d.id for d in docs] == [h.document.id for h in core.retrieve(QUERIES[0], k=2)]
    assert docs[0].metadata["topic"] == docs[0].id and "score" in docs[0].metadata


class TextOnlyStore(VectorStore):
    """A real (tiny) store that searches by text overlap only: it cannot search by vector."""

    def __init__(self, embedding: Embeddings) -> None:
        self.embedding = embedding
        self.docs: list[Document] = []

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> list[str]:
        texts = list(texts)
        self.embedding.embed_documents(texts)
        ids = kwargs.get("ids") or [str(len(self.docs) + i) for i in range(len(texts))]
        for i, text in enumerate(texts):
            self.docs.append(Document(id=ids[i], page_content=text, metadata=(metadatas or [{}] * len(texts))[i]))
        return ids

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        words = set(query.lower().split())
        return sorted(self.docs, key=lambda d: -len(words & set(d.page_content.lower().split())))[:k]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: Any = None, **kwargs: Any) -> TextOnlyStore:
        store = cls(embedding)
        store.add_texts(texts, metadatas)
        return store


def test_store_that_cannot_search_by_vector(core: softcar.ClassifierRetriever) -> None:
    index = SoftcarVectorIndex(core, TextOnlyStore(SoftcarEmbeddings(core)))
    index.push()
    with pytest.raises(VectorSearchUnsupportedError, match="TextOnlyStore cannot search by vector"):
        index.search("threads", k=2)


def test_unusable_stores_and_embeddings(core: softcar.ClassifierRetriever, tiny_encoder: str) -> None:
    with pytest.raises(VectorStoreError, match="must be a langchain_core VectorStore"):
        SoftcarVectorIndex(core, {"not": "a store"})  # type: ignore[arg-type]
    other = softcar.ClassifierRetriever(tiny_encoder, config=FAST).fit(["a document", "another one"])
    with pytest.raises(VectorStoreError, match="SoftcarEmbeddings"):
        SoftcarVectorIndex(core, InMemoryVectorStore(SoftcarEmbeddings(other)))
    with pytest.raises(TypeError):  # VectorStoreError is a TypeError too
        SoftcarVectorIndex(core, InMemoryVectorStore(SoftcarEmbeddings(other)))
    with pytest.raises(VectorStoreError, match="only while"):
        SoftcarEmbeddings(core).embed_documents(["some text"])
