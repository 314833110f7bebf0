"""Behaviour of llama_index.retrievers.softcar.ClassifierRetriever (tiny random encoders, offline)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from llama_index.core import Document as LIDocument
from llama_index.core import MockEmbedding, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.evaluation import RetrieverEvaluator
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, NodeWithScore, QueryBundle, TextNode
from llama_index.core.storage.docstore import SimpleDocumentStore

from llama_index.retrievers.softcar import ClassifierRetriever, evaluate_retriever, training_pairs
from llama_index.retrievers.softcar.base import NODE_KEY
from softcar import BM25Retriever, TrainConfig
from softcar import ClassifierRetriever as CoreRetriever
from softcar.errors import EmptyQueryError, InvalidKError, InvalidTrainingPairError, UnknownDocumentError

QUERY = "why can't my threads run Python code in parallel?"


def ids(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.node_id for n in nodes]


def test_is_a_llamaindex_retriever_returning_text_nodes(shared_li: ClassifierRetriever) -> None:
    assert isinstance(shared_li, BaseRetriever)
    nodes = shared_li.retrieve(QUERY)
    hits = shared_li.retriever.retrieve(QUERY, k=3)
    assert ids(nodes) == [h.document.id for h in hits]
    assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])
    assert [n.node.get_content() for n in nodes] == [h.document.text for h in hits]
    assert all(n.node.metadata == {"topic": n.node.node_id} for n in nodes)
    assert ids(shared_li.retrieve(QueryBundle(QUERY))) == ids(nodes)


def test_top_k_larger_than_corpus_returns_everything(shared_li: ClassifierRetriever) -> None:
    li = ClassifierRetriever(shared_li.retriever, similarity_top_k=50)
    assert sorted(ids(li.retrieve(QUERY))) == sorted(d.id for d in shared_li.retriever.documents)


def test_top_k_zero_is_a_clear_error(shared_li: ClassifierRetriever) -> None:
    with pytest.raises(InvalidKError, match="k must be >= 1"):
        ClassifierRetriever(shared_li.retriever, similarity_top_k=0)
    li = ClassifierRetriever(shared_li.retriever)
    with pytest.raises(InvalidKError):
        li.similarity_top_k = -1
    assert li.similarity_top_k == 4


def test_empty_query_is_a_clear_error(shared_li: ClassifierRetriever) -> None:
    with pytest.raises(EmptyQueryError, match="empty"):
        shared_li.retrieve("")
    with pytest.raises(EmptyQueryError):
        shared_li.retrieve("   \n")


async def test_empty_query_async(shared_li: ClassifierRetriever) -> None:
    with pytest.raises(EmptyQueryError):
        await shared_li.aretrieve(" ")


def test_constructor_rejects_bad_retrievers(tiny_encoder: str) -> None:
    with pytest.raises(TypeError, match="softcar.Retriever"):
        ClassifierRetriever(object())
    with pytest.raises(ValueError, match="fit it first"):
        ClassifierRetriever(CoreRetriever(tiny_encoder))


def test_query_engine_with_mock_llm(shared_li: ClassifierRetriever) -> None:
    engine = RetrieverQueryEngine.from_args(shared_li, llm=MockLLM())
    response = engine.query(QUERY)
    assert ids(response.source_nodes) == ids(shared_li.retrieve(QUERY))
    # MockLLM echoes its prompt, so the retrieved text reached the LLM.
    assert shared_li.retrieve(QUERY)[0].node.get_content() in str(response)


async def test_query_engine_async(shared_li: ClassifierRetriever) -> None:
    engine = RetrieverQueryEngine.from_args(shared_li, llm=MockLLM(), use_async=True)
    response = await engine.aquery(QUERY)
    assert ids(response.source_nodes) == ids(shared_li.retrieve(QUERY))


async def test_aretrieve_matches_and_does_not_block_the_loop(shared_li: ClassifierRetriever) -> None:
    core = shared_li.retriever
    expected = ids(shared_li.retrieve(QUERY))
    real = core.retrieve

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)  # a blocking forward pass
        return real(*args, **kwargs)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    with mock.patch.object(core, "retrieve", slow):
        task = asyncio.create_task(ticker())
        nodes = await shared_li.aretrieve(QUERY)
        task.cancel()
    assert ids(nodes) == expected
    assert ticks >= 10  # a blocked loop would not tick during the 0.4 s call


def test_retrieve_batch_uses_the_core_batch(shared_li: ClassifierRetriever) -> None:
    queries = [QUERY, "decimal fractions"]
    with mock.patch.object(shared_li.retriever, "retrieve_batch", wraps=shared_li.retriever.retrieve_batch) as batch:
        out = shared_li.retrieve_batch(queries)
    assert batch.call_count == 1
    assert [ids(n) for n in out] == [ids(shared_li.retrieve(q)) for q in queries]


def test_persist_round_trip(shared_li: ClassifierRetriever, tmp_path: Path) -> None:
    shared_li.persist(tmp_path / "index")
    again = ClassifierRetriever.from_persist_dir(tmp_path / "index", similarity_top_k=3)
    first, second = shared_li.retrieve(QUERY), again.retrieve(QUERY)
    assert ids(first) == ids(second)
    assert [n.score for n in first] == pytest.approx([n.score for n in second], abs=1e-5)
    assert [n.node.metadata for n in first] == [n.node.metadata for n in second]


def test_from_documents_whole_or_chunked(tiny_encoder: str, fast: TrainConfig) -> None:
    long_text = " ".join(f"Sentence {i} is about Python threads and the interpreter lock." for i in range(30))
    docs = [LIDocument(text=long_text, doc_id="a"), LIDocument(text="Beta floats.", doc_id="b")]
    whole = ClassifierRetriever.from_documents(docs, similarity_top_k=5, encoder=tiny_encoder, config=fast)
    assert sorted(ids(whole.retrieve("threads"))) == ["a", "b"]
    chunked = ClassifierRetriever.from_documents(
        docs,
        similarity_top_k=5,
        transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0)],
        encoder=tiny_encoder,
        config=fast,
    )
    chunks = chunked.retrieve("threads")
    assert len(chunked.retriever.documents) > 3  # the long document became several nodes
    assert len(chunks) == 5 and {n.node.node_id for n in chunks}.isdisjoint({"a", "b"})


def test_finetune_dataset_in_all_its_shapes(
    tiny_encoder: str, fast: TrainConfig, nodes: list[TextNode], qa_dataset: dict, tmp_path: Path
) -> None:
    assert sorted(training_pairs(qa_dataset)) == sorted(
        (q, docs[0])
        for q, docs in zip(qa_dataset["queries"].values(), qa_dataset["relevant_docs"].values(), strict=True)
    )

    class EmbeddingQAFinetuneDataset(BaseModel):  # same fields as LlamaIndex's class
        queries: dict[str, str]
        corpus: dict[str, str]
        relevant_docs: dict[str, list[str]]

    path = tmp_path / "train_dataset.json"
    path.write_text(json.dumps(qa_dataset))
    for source in (qa_dataset, str(path), path, EmbeddingQAFinetuneDataset(**qa_dataset)):
        li = ClassifierRetriever.from_finetune_dataset(source, similarity_top_k=2, encoder=tiny_encoder, config=fast)
        assert {d.id for d in li.retriever.documents} == set(qa_dataset["corpus"])
    with_pairs = ClassifierRetriever.from_nodes(nodes, queries=qa_dataset, encoder=tiny_encoder, config=fast)
    assert len(with_pairs.retriever.documents) == len(nodes)
    with pytest.raises(TypeError, match="EmbeddingQAFinetuneDataset"):
        ClassifierRetriever.from_finetune_dataset({"queries": {}}, encoder=tiny_encoder)
    with pytest.raises(UnknownDocumentError):
        bad = {**qa_dataset, "relevant_docs": {"q-gil": ["missing"]}}
        ClassifierRetriever.from_nodes(nodes, queries=bad, encoder=tiny_encoder, config=fast)


def test_training_on_the_dataset_helps_its_queries(tiny_encoder: str, nodes: list[TextNode], qa_dataset: dict) -> None:
    """Labelled pairs from the dataset are really used: hit rate@1 reaches 1 on them."""
    config = TrainConfig(
        epochs=15, batch_size=8, pseudo_queries_per_document=1, labelled_repeats=4, show_progress=False
    )
    li = ClassifierRetriever.from_nodes(
        nodes, similarity_top_k=1, queries=qa_dataset, encoder=tiny_encoder, config=config
    )
    assert evaluate_retriever(li, qa_dataset) == {"hit_rate": 1.0, "mrr": 1.0}


def test_evaluation_matches_llamaindex_retriever_evaluator(shared_li: ClassifierRetriever, qa_dataset: dict) -> None:
    scores = evaluate_retriever(shared_li, qa_dataset)
    evaluator = RetrieverEvaluator.from_metric_names(["hit_rate", "mrr"], retriever=shared_li)
    by_hand = [
        evaluator.evaluate(qa_dataset["queries"][q], expected_ids=docs).metric_vals_dict
        for q, docs in qa_dataset["relevant_docs"].items()
    ]
    assert scores["hit_rate"] == pytest.approx(sum(r["hit_rate"] for r in by_hand) / 3)
    assert scores["mrr"] == pytest.approx(sum(r["mrr"] for r in by_hand) / 3)
    assert 0.0 <= scores["mrr"] <= scores["hit_rate"] <= 1.0


def test_update_from_feedback(tiny_encoder: str, fast: TrainConfig, nodes: list[TextNode]) -> None:
    li = ClassifierRetriever.from_nodes(nodes, similarity_top_k=2, encoder=tiny_encoder, config=fast)
    question = "zebra carpentry workshop schedule"
    top = li.retrieve(question)
    target = top[1]  # the user preferred the second hit
    losses = li.update([(question, target)] * 4, epochs=10)
    assert losses
    assert ids(li.retrieve(question))[0] == target.node.node_id
    with pytest.raises(UnknownDocumentError):
        li.update([(question, "nope")])


async def test_aupdate(tiny_encoder: str, fast: TrainConfig, nodes: list[TextNode]) -> None:
    li = ClassifierRetriever.from_nodes(nodes, encoder=tiny_encoder, config=fast)
    assert len(await li.aupdate([("zebra", nodes[0])], epochs=1)) == 1


def test_add_nodes_and_baselines(tiny_encoder: str, fast: TrainConfig, nodes: list[TextNode]) -> None:
    li = ClassifierRetriever.from_nodes(nodes, similarity_top_k=10, encoder=tiny_encoder, config=fast)
    assert li.add_nodes([TextNode(id_="walrus", text="The walrus operator := assigns in expressions.")]) == ["walrus"]
    assert "walrus" in ids(li.retrieve(":= operator"))
    bm25 = ClassifierRetriever.from_nodes(nodes, similarity_top_k=1, retriever=BM25Retriever())
    assert ids(bm25.retrieve("global interpreter lock thread")) == ["gil"]
    with pytest.raises(NotImplementedError):
        bm25.update([("q", "gil")])


@pytest.mark.slow
def test_packaged_minilm_query_engine_end_to_end(nodes: list[TextNode], qa_dataset: dict) -> None:
    """The real packaged all-MiniLM-L6-v2 behind a query engine finds the right answers."""
    li = ClassifierRetriever.from_nodes(nodes, similarity_top_k=1, config=TrainConfig(epochs=2, show_progress=False))
    assert evaluate_retriever(li, qa_dataset)["hit_rate"] == 1.0
    response = RetrieverQueryEngine.from_args(li, llm=MockLLM()).query("why is 0.1 not exact in binary?")
    assert ids(response.source_nodes) == ["float"]


# ---------------------------------------------------------------------- nodes come back whole
def chunked_nodes() -> list[BaseNode]:
    """Nodes as a reader + SentenceSplitter make them: SOURCE/PREV/NEXT, ref_doc_id, excluded keys."""
    text = " ".join(f"{TOPICS[i % len(TOPICS)]} Note {i}." for i in range(24))
    document = LIDocument(
        text=text,
        doc_id="faq.txt",
        metadata={"file_name": "faq.txt", "category": "python", "pages": [1, 2]},
        excluded_embed_metadata_keys=["category"],
        excluded_llm_metadata_keys=["pages"],
    )
    return SentenceSplitter(chunk_size=48, chunk_overlap=0).get_nodes_from_documents([document])


TOPICS = [
    "Python uses indentation for grouping statements.",
    "Floating point numbers are stored in binary.",
    "The global interpreter lock lets one thread run bytecode at a time.",
]


def assert_same_nodes(hits: list[NodeWithScore], originals: dict[str, BaseNode]) -> None:
    for hit in hits:
        node, original = hit.node, originals[hit.node.node_id]
        assert type(node) is type(original)
        assert node.relationships == original.relationships
        assert node.ref_doc_id == original.ref_doc_id == "faq.txt"
        assert node.metadata == original.metadata and NODE_KEY not in node.metadata
        assert node.excluded_embed_metadata_keys == original.excluded_embed_metadata_keys
        assert node.excluded_llm_metadata_keys == original.excluded_llm_metadata_keys
        assert node.get_content(MetadataMode.LLM) == original.get_content(MetadataMode.LLM)
        assert node.get_content(MetadataMode.EMBED) == original.get_content(MetadataMode.EMBED)
        assert NODE_KEY not in node.get_content(MetadataMode.ALL) and "score" not in node.metadata
        assert node == original  # every other field too (text, char offsets, templates, hash)


def test_nodes_round_trip_through_fit_retrieve_persist_and_load(
    tiny_encoder: str, fast: TrainConfig, tmp_path: Path
) -> None:
    nodes = chunked_nodes()
    assert len(nodes) > 3 and all(NodeRelationship.SOURCE in n.relationships for n in nodes)
    assert any(NodeRelationship.PREVIOUS in n.relationships for n in nodes)
    assert any(NodeRelationship.NEXT in n.relationships for n in nodes)
    originals = {n.node_id: n for n in nodes}
    li = ClassifierRetriever.from_nodes(nodes, similarity_top_k=len(nodes), encoder=tiny_encoder, config=fast)
    first = li.retrieve("threads and the interpreter lock")
    assert {n.node.node_id for n in first} == set(originals)
    assert_same_nodes(first, originals)

    li.persist(tmp_path / "index")
    again = ClassifierRetriever.from_persist_dir(tmp_path / "index", similarity_top_k=len(nodes))
    second = again.retrieve("threads and the interpreter lock")
    assert [n.node.node_id for n in second] == [n.node.node_id for n in first]
    assert_same_nodes(second, originals)
    assert_same_nodes(again.retrieve_batch(["floating point"])[0], originals)

    # The LLM sees the original node's content only: no softcar payload, no score in metadata.
    engine = RetrieverQueryEngine.from_args(again, llm=MockLLM())
    response = engine.query("threads and the interpreter lock")
    assert NODE_KEY not in str(response) and "pages" not in str(response)
    assert_same_nodes(response.source_nodes, originals)


async def test_nodes_round_trip_async_and_added_nodes(tiny_encoder: str, fast: TrainConfig) -> None:
    nodes = chunked_nodes()
    originals = {n.node_id: n for n in nodes}
    li = ClassifierRetriever.from_nodes(nodes[:2], similarity_top_k=len(nodes), encoder=tiny_encoder, config=fast)
    li.add_nodes(nodes[2:])
    hits = await li.aretrieve("floating point numbers")
    assert len(hits) == len(nodes)
    assert_same_nodes(hits, originals)
    assert_same_nodes((await li.aretrieve_batch(["floating point numbers"]))[0], originals)


def test_returned_nodes_are_copies(shared_li: ClassifierRetriever) -> None:
    """Node postprocessors may edit the nodes they get; the store must not change."""
    hit = shared_li.retrieve(QUERY)[0]
    hit.node.metadata["topic"] = "edited"
    hit.node.metadata["extra"] = 1
    again = next(n for n in shared_li.retrieve(QUERY) if n.node.node_id == hit.node.node_id)
    assert again.node.metadata == {"topic": hit.node.node_id}


def test_reserved_metadata_key_is_refused(tiny_encoder: str, fast: TrainConfig) -> None:
    with pytest.raises(ValueError, match="reserved"):
        ClassifierRetriever.from_nodes([TextNode(text="a b c", metadata={NODE_KEY: 1})], encoder=tiny_encoder)


def test_documents_indexed_without_nodes_come_back_as_text_nodes(texts_core: Any) -> None:
    li = ClassifierRetriever(texts_core, similarity_top_k=2)
    hits = li.retrieve("the global interpreter lock and threads")
    assert all(type(n.node) is TextNode for n in hits)
    assert hits[0].node.node_id == "gil" and hits[0].node.metadata == {"topic": "gil"}
    assert hits[0].node.get_content() == texts_core.documents[4].text


@pytest.fixture
def texts_core(nodes: list[TextNode]) -> BM25Retriever:
    return BM25Retriever().fit([{"id": n.node_id, "text": n.text, "metadata": dict(n.metadata)} for n in nodes])


# ---------------------------------------------------------------------- from_defaults
def test_from_defaults_takes_nodes_a_docstore_or_an_index(tiny_encoder: str, fast: TrainConfig) -> None:
    nodes = chunked_nodes()
    originals = {n.node_id: n for n in nodes}
    docstore = SimpleDocumentStore()
    docstore.add_documents(nodes)
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    for source in ({"nodes": nodes}, {"docstore": docstore}, {"index": index}):
        li = ClassifierRetriever.from_defaults(**source, similarity_top_k=3, encoder=tiny_encoder, config=fast)
        assert {d.id for d in li.retriever.documents} == set(originals)
        hits = li.retrieve("floating point numbers")
        assert len(hits) == 3
        assert_same_nodes(hits, originals)
    bm25 = ClassifierRetriever.from_defaults(nodes=nodes, similarity_top_k=1, retriever=BM25Retriever())
    assert isinstance(bm25.retriever, BM25Retriever)
    with pytest.raises(ValueError, match="exactly one"):
        ClassifierRetriever.from_defaults(encoder=tiny_encoder)
    with pytest.raises(ValueError, match="exactly one"):
        ClassifierRetriever.from_defaults(nodes=nodes, docstore=docstore, encoder=tiny_encoder)
    with pytest.raises(ValueError, match="no nodes"):
        ClassifierRetriever.from_defaults(docstore=SimpleDocumentStore(), encoder=tiny_encoder)


# ---------------------------------------------------------------------- feedback validation
def test_feedback_is_validated_by_the_core(shared_li: ClassifierRetriever, nodes: list[TextNode]) -> None:
    """softcar.normalize_pairs checks the pairs; nodes and NodeWithScore count by node_id."""
    calls = []
    core = shared_li.retriever
    with mock.patch.object(core, "update", side_effect=lambda pairs, **kw: calls.append(pairs)):
        shared_li.update([("q1", "gil"), ("q2", nodes[1]), ["q3", NodeWithScore(node=nodes[2], score=0.5)]])
        shared_li.update(pair for pair in [("q4", "gil")])
    assert calls == [[("q1", "gil"), ("q2", nodes[1].node_id), ("q3", nodes[2].node_id)], [("q4", "gil")]]
    with pytest.raises(InvalidTrainingPairError, match="wrap a single pair"):
        shared_li.update(("q", "gil"))
    with pytest.raises(InvalidTrainingPairError):
        shared_li.update([("q", 7)])
    with pytest.raises(InvalidTrainingPairError):
        shared_li.update(["not a pair"])
    with pytest.raises(EmptyQueryError):
        shared_li.update([(" ", "gil")])
