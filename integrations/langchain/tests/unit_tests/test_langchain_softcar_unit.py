"""Behaviour of langchain_softcar.ClassifierRetriever on tiny random encoders (fast, offline)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ValidationError

from langchain_softcar import ClassifierRetriever
from softcar import BM25Retriever, InnerProductRetriever
from softcar import ClassifierRetriever as CoreRetriever
from softcar.errors import (
    EmptyQueryError,
    InvalidKError,
    InvalidQueryError,
    InvalidTrainingPairError,
    UnknownDocumentError,
)

QUERY = "why can't my threads run Python code in parallel?"


class RunCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[str] = []
        self.ends = 0
        self.errors = 0

    def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
        self.starts.append(query)

    def on_retriever_end(self, documents: Any, **kwargs: Any) -> None:
        self.ends += 1

    def on_retriever_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors += 1


def ids(docs: list[Document]) -> list[str | None]:
    return [d.id for d in docs]


def test_is_a_langchain_retriever_with_pydantic_fields(shared_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=shared_core, k=3)
    assert isinstance(lc, BaseRetriever)
    assert set(ClassifierRetriever.model_fields) >= {"retriever", "k"}
    assert lc.k == 3 and lc.retriever is shared_core


def test_invoke_matches_the_core_ranking(shared_core: CoreRetriever) -> None:
    docs = ClassifierRetriever(retriever=shared_core, k=4).invoke(QUERY)
    hits = shared_core.retrieve(QUERY, k=4)
    assert ids(docs) == [h.document.id for h in hits]
    assert [d.page_content for d in docs] == [h.document.text for h in hits]
    assert [d.metadata["score"] for d in docs] == pytest.approx([h.score for h in hits])
    assert all(d.metadata["topic"] == d.id for d in docs)  # core metadata is kept
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


def test_per_call_k_overrides_the_field(shared_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=shared_core, k=4)
    assert len(lc.invoke(QUERY, k=2)) == 2
    assert len(lc.invoke(QUERY)) == 4
    assert len(lc.invoke(QUERY, k=100)) == len(shared_core.documents)  # clipped by the core


def test_bad_k_and_bad_queries_raise_typed_errors(shared_core: CoreRetriever) -> None:
    with pytest.raises(ValidationError):
        ClassifierRetriever(retriever=shared_core, k=0)
    lc = ClassifierRetriever(retriever=shared_core)
    with pytest.raises(InvalidKError):
        lc.invoke(QUERY, k=0)
    with pytest.raises(EmptyQueryError):
        lc.invoke("   ")
    with pytest.raises(InvalidQueryError):
        lc.invoke(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        lc.invoke(QUERY, top_k=2)


def test_constructor_rejects_non_retrievers_and_unfitted_ones(tiny_encoder: str) -> None:
    with pytest.raises(ValidationError, match="softcar.Retriever"):
        ClassifierRetriever(retriever=object())
    with pytest.raises(ValidationError, match="fit it first"):
        ClassifierRetriever(retriever=CoreRetriever(tiny_encoder))


def test_from_documents_and_from_texts(tiny_encoder: str, texts: dict[str, str]) -> None:
    from softcar import TrainConfig

    fast = TrainConfig(epochs=1, batch_size=8, pseudo_queries_per_document=2, show_progress=False)
    lc = ClassifierRetriever.from_texts(
        list(texts.values()),
        metadatas=[{"src": k} for k in texts],
        ids=list(texts),
        k=2,
        encoder=tiny_encoder,
        config=fast,
    )
    assert {d.id for d in lc.retriever.documents} == set(texts)
    docs = lc.invoke(QUERY)
    assert len(docs) == 2 and all(d.metadata["src"] == d.id for d in docs)

    plain = ClassifierRetriever.from_texts(["alpha text here", "beta text there"], encoder=tiny_encoder, config=fast)
    assert [d.id for d in plain.retriever.documents] == ["0", "1"]

    lc_docs = [Document(id=k, page_content=v, metadata={"n": i}) for i, (k, v) in enumerate(texts.items())]
    from_docs = ClassifierRetriever.from_documents(
        lc_docs, k=3, encoder=tiny_encoder, config=fast, queries=[("threads in parallel", "gil")]
    )
    assert [d.id for d in from_docs.retriever.documents] == list(texts)
    assert len(from_docs.invoke(QUERY)) == 3
    with pytest.raises(ValueError, match="metadatas"):
        ClassifierRetriever.from_texts(["a b c"], metadatas=[{}, {}], encoder=tiny_encoder, config=fast)
    with pytest.raises(UnknownDocumentError):
        ClassifierRetriever.from_documents(lc_docs, encoder=tiny_encoder, config=fast, queries=[("q", "nope")])


def test_wraps_the_baselines(tiny_encoder: str, texts: dict[str, str]) -> None:
    bm25 = ClassifierRetriever.from_texts(list(texts.values()), ids=list(texts), retriever=BM25Retriever(), k=1)
    assert ids(bm25.invoke("the global interpreter lock and threads")) == ["gil"]
    dense = ClassifierRetriever.from_texts(
        list(texts.values()), ids=list(texts), retriever=InnerProductRetriever(tiny_encoder)
    )
    assert len(dense.invoke(QUERY)) == 4
    with pytest.raises(NotImplementedError, match="feedback"):
        bm25.update([("q", "gil")])


def test_batch_uses_one_core_batch_call(shared_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=shared_core, k=2)
    queries = [QUERY, "floating point decimal fractions", "immutable strings as keys"]
    expected = [[h.document.id for h in hits] for hits in shared_core.retrieve_batch(queries, k=2)]
    counter = RunCounter()
    with (
        mock.patch.object(shared_core, "retrieve_batch", wraps=shared_core.retrieve_batch) as batch,
        mock.patch.object(shared_core, "retrieve", side_effect=AssertionError("batch must not loop over retrieve")),
    ):
        results = lc.batch(queries, config={"callbacks": [counter]})
        assert batch.call_count == 1
        assert [ids(r) for r in results] == expected
        assert counter.starts == queries and counter.ends == 3  # one traced run per input
        assert [len(r) for r in lc.batch(queries, k=1)] == [1, 1, 1]
        assert lc.batch([]) == []


def test_batch_reports_bad_inputs_per_item(shared_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=shared_core, k=2)
    counter = RunCounter()
    out = lc.batch([QUERY, "  "], config={"callbacks": [counter]}, return_exceptions=True)
    assert len(out[0]) == 2 and isinstance(out[1], EmptyQueryError)
    assert counter.ends == 1 and counter.errors == 1
    with pytest.raises(EmptyQueryError):
        lc.batch([QUERY, ""])
    counter = RunCounter()
    out = lc.batch([QUERY, QUERY], config={"callbacks": [counter]}, k=0, return_exceptions=True)
    assert all(isinstance(o, InvalidKError) for o in out) and counter.errors == 2
    with pytest.raises(TypeError, match="unexpected keyword"):
        lc.batch([QUERY], top_k=2)


def test_batch_keeps_per_input_configs(shared_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=shared_core, k=2)
    first, second = RunCounter(), RunCounter()
    queries = [QUERY, "floating point decimal fractions"]
    lc.batch(queries, config=[{"callbacks": [first]}, {"callbacks": [second]}])
    assert first.starts == queries[:1] and second.starts == queries[1:]
    assert first.ends == second.ends == 1


async def test_abatch_and_ainvoke(shared_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=shared_core, k=3)
    queries = [QUERY, "floating point decimal fractions"]
    counter = RunCounter()
    with (
        mock.patch.object(shared_core, "retrieve_batch", wraps=shared_core.retrieve_batch) as batch,
        mock.patch.object(shared_core, "retrieve", side_effect=AssertionError("abatch must not loop over retrieve")),
    ):
        results = await lc.abatch(queries, config={"callbacks": [counter]}, k=2)
        assert batch.call_count == 1
    assert counter.starts == queries and counter.ends == 2  # one traced run per input
    assert [ids(r) for r in results] == [ids(lc.invoke(q, k=2)) for q in queries]
    assert ids(await lc.ainvoke(QUERY)) == ids(lc.invoke(QUERY))
    out = await lc.abatch(["", QUERY], return_exceptions=True)
    assert isinstance(out[0], EmptyQueryError) and len(out[1]) == 3


async def test_async_calls_do_not_block_the_event_loop(shared_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=shared_core)
    real_retrieve, real_batch = shared_core.retrieve, shared_core.retrieve_batch

    def slow_retrieve(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)  # a blocking call, like a big model's forward pass
        return real_retrieve(*args, **kwargs)

    def slow_batch(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)
        return real_batch(*args, **kwargs)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    with (
        mock.patch.object(shared_core, "retrieve", slow_retrieve),
        mock.patch.object(shared_core, "retrieve_batch", slow_batch),
    ):
        task = asyncio.create_task(ticker())
        docs = await lc.ainvoke(QUERY)
        after_invoke = ticks
        await lc.abatch([QUERY, QUERY])
        task.cancel()
    assert len(docs) == 4
    # A blocked loop would tick ~0 times during each 0.4 s call.
    assert after_invoke >= 10 and ticks - after_invoke >= 10


def test_update_from_feedback_changes_the_ranking(fresh_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=fresh_core, k=1)
    question = "zebra carpentry workshop schedule"
    before = lc.invoke(question)[0].id
    target = "lambda" if before != "lambda" else "float"
    target_doc = next(Document(id=d.id, page_content=d.text) for d in fresh_core.documents if d.id == target)
    losses = lc.update([(question, target_doc)] * 4, epochs=10)
    assert losses and all(loss == loss for loss in losses)
    assert lc.invoke(question)[0].id == target
    with pytest.raises(UnknownDocumentError):
        lc.update([(question, "no-such-doc")])


def test_feedback_is_validated_by_the_core(fresh_core: CoreRetriever) -> None:
    """softcar.normalize_pairs checks the pairs; a LangChain Document counts by its id."""
    lc = ClassifierRetriever(retriever=fresh_core, k=1)
    calls = []
    with mock.patch.object(fresh_core, "update", side_effect=lambda pairs, **kw: calls.append(pairs)):
        lc.update([("q1", "gil"), ["q2", Document(id="float", page_content="...")]], epochs=1)
        lc.update(pair for pair in [("q3", "gil")])  # any iterable of pairs
    assert calls == [[("q1", "gil"), ("q2", "float")], [("q3", "gil")]]
    with pytest.raises(InvalidTrainingPairError, match="wrap a single pair"):
        lc.update(("q", "gil"))  # a single pair, not wrapped in a list
    with pytest.raises(InvalidTrainingPairError, match="no id"):
        lc.update([("q", Document(page_content="returned by another retriever"))])
    with pytest.raises(InvalidTrainingPairError):
        lc.update([("q", 3)])
    with pytest.raises(InvalidTrainingPairError):
        lc.update([("q", "gil", "extra")])
    with pytest.raises(EmptyQueryError):
        lc.update([("  ", "gil")])


async def test_aupdate_runs_off_the_loop(fresh_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=fresh_core, k=1)
    losses = await lc.aupdate([("zebra carpentry", "gil")], epochs=1)
    assert len(losses) == 1
    with pytest.raises(InvalidTrainingPairError):  # raised before the worker thread starts
        await lc.aupdate(("zebra carpentry", "gil"))


def test_add_documents_then_retrieve(fresh_core: CoreRetriever) -> None:
    lc = ClassifierRetriever(retriever=fresh_core, k=10)
    added = lc.add_documents(
        [Document(id="walrus", page_content="The walrus operator := assigns inside an expression.")]
    )
    assert added == ["walrus"]
    assert "walrus" in ids(lc.invoke("what does := do"))


def test_save_and_from_pretrained_round_trip(shared_core: CoreRetriever, tmp_path: Path) -> None:
    lc = ClassifierRetriever(retriever=shared_core, k=3)
    lc.save(tmp_path / "model")
    again = ClassifierRetriever.from_pretrained(tmp_path / "model", k=3)
    assert type(again.retriever) is CoreRetriever
    first, second = lc.invoke(QUERY), again.invoke(QUERY)
    assert ids(first) == ids(second)
    assert [d.metadata["score"] for d in first] == pytest.approx([d.metadata["score"] for d in second], abs=1e-5)

    bm25 = ClassifierRetriever.from_texts(["a cat sat", "a dog ran", "fish swim"], retriever=BM25Retriever())
    bm25.save(tmp_path / "bm25")
    assert ids(ClassifierRetriever.from_pretrained(tmp_path / "bm25").invoke("dog")) == ids(bm25.invoke("dog"))
