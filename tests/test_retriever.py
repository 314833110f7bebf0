"""Behaviour of ClassifierRetriever on tiny random encoders (fast, no weights needed)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from softcar import (
    ClassifierRetriever,
    Document,
    InnerProductRetriever,
    Retriever,
    ScoredDocument,
    ScoringConfig,
    TrainConfig,
)
from softcar.errors import CheckpointError
from tests.conftest import FAST

QUESTIONS = [
    "why is indentation used for grouping",
    "why is 0.1 not exact in floating point",
    "why are strings immutable",
    "why must self be explicit",
    "what does the global interpreter lock do",
    "why can't lambda contain statements",
]


SOFT_ONLY = ScoringConfig(hybrid_weight=0.0, question_rows=False)
"""Head scores alone: what the tests of training and prototypes look at."""


def ranking(retriever: Retriever, queries: list[str] = QUESTIONS) -> list[list[tuple[str, float]]]:
    return [[(h.document.id, round(h.score, 5)) for h in hits] for hits in retriever.retrieve_batch(queries, k=6)]


def test_untrained_equals_frozen_inner_product(tiny_bert: str, corpus: list[Document]) -> None:
    """Head rows start as document embeddings and the adapter as identity: epoch 0 == inner-product
    search (with BM25 fusion off)."""
    untrained = ClassifierRetriever(tiny_bert, config=TrainConfig(epochs=0, show_progress=False), scoring=SOFT_ONLY)
    untrained.fit(corpus)
    frozen = InnerProductRetriever(tiny_bert).fit(corpus)
    assert [[d for d, _ in r] for r in ranking(untrained)] == [[d for d, _ in r] for r in ranking(frozen)]
    for a, b in zip(ranking(untrained), ranking(frozen)):
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)


def test_labelled_queries_become_row_prototypes(tiny_bert: str, corpus: list[Document]) -> None:
    """With pairs and no training, each row is normalize(doc + w * query): the query's own row scores it higher."""
    pairs = list(zip(QUESTIONS, [d.id for d in corpus]))
    frozen = InnerProductRetriever(tiny_bert, show_progress=False).fit(corpus)
    config = TrainConfig(epochs=0, query_prototype_weight=2.0, show_progress=False)
    retriever = ClassifierRetriever(tiny_bert, config=config, scoring=SOFT_ONLY).fit(corpus, queries=pairs)
    rows = retriever.model.head.weight.detach().cpu()
    expected = torch.nn.functional.normalize(
        frozen.embed_documents([d.text for d in corpus]) + 2.0 * frozen.embed_queries(QUESTIONS), dim=1
    )
    assert torch.allclose(rows, expected, atol=1e-5)
    for question, doc in zip(QUESTIONS, corpus):
        own = {h.document.id: h.score for h in retriever.retrieve(question, k=len(corpus))}[doc.id]
        before = {h.document.id: h.score for h in frozen.retrieve(question, k=len(corpus))}[doc.id]
        assert own > before
    off = ClassifierRetriever(
        tiny_bert, config=config.model_copy(update={"query_prototype_weight": 0.0}), scoring=SOFT_ONLY
    )
    off.fit(corpus, queries=pairs)
    assert [[d for d, _ in r] for r in ranking(off)] == [[d for d, _ in r] for r in ranking(frozen)]


def test_inner_product_embeddings_are_unit_norm(tiny_bert: str) -> None:
    frozen = InnerProductRetriever(tiny_bert, show_progress=False)
    vectors = torch.cat([frozen.embed_queries(["a question"]), frozen.embed_documents(["a text", "another"])])
    assert vectors.shape == (3, frozen.encoder.dim)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)


def test_fit_learns_the_corpus(tiny_bert: str, corpus: list[Document]) -> None:
    # Training itself, on every pair: no held-out pairs, so no guard (tests/test_holdout.py).
    config = TrainConfig(
        epochs=15, batch_size=8, pseudo_queries_per_document=4, holdout_fraction=0.0, show_progress=False
    )
    retriever = ClassifierRetriever(tiny_bert, config=config, scoring=SOFT_ONLY)
    before = ClassifierRetriever(tiny_bert, config=TrainConfig(epochs=0, show_progress=False), scoring=SOFT_ONLY)
    before.fit(corpus)
    retriever.fit(corpus, queries=list(zip(QUESTIONS, [d.id for d in corpus])))
    top1 = [hits[0].document.id for hits in retriever.retrieve_batch(QUESTIONS, k=1)]
    top1_before = [hits[0].document.id for hits in before.retrieve_batch(QUESTIONS, k=1)]
    correct = sum(t == d.id for t, d in zip(top1, corpus))
    assert correct == len(corpus), top1
    assert correct > sum(t == d.id for t, d in zip(top1_before, corpus))


def test_slm_is_bit_for_bit_unchanged(tiny_bert: str, corpus: list[Document]) -> None:
    retriever = ClassifierRetriever(tiny_bert, config=FAST)
    before = {k: v.clone() for k, v in retriever.model.encoder.model.state_dict().items()}
    retriever.fit(corpus, queries=[(QUESTIONS[0], "indent")])
    retriever.update([(QUESTIONS[1], "float")], epochs=1)
    after = retriever.model.encoder.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(p.abs().sum() > 0 for p in retriever.model.adapter.parameters())  # the adapter did train


@pytest.mark.parametrize("adapter", ["linear", "mlp"])
def test_adapters_start_as_identity(tiny_bert: str, adapter: str) -> None:
    retriever = ClassifierRetriever(tiny_bert, adapter=adapter, config=FAST)  # type: ignore[arg-type]
    x = torch.randn(2, 5, retriever.model.encoder.dim, device=retriever.device)
    assert torch.equal(retriever.model.adapter(x), x)


def test_accepts_strings_dicts_and_documents(tiny_bert: str) -> None:
    retriever = ClassifierRetriever(tiny_bert, config=FAST).fit(
        ["plain text one", {"id": "d", "text": "a dict", "metadata": {"m": 1}}, Document(id="x", text="model")]
    )
    assert [d.id for d in retriever.documents] == ["0", "d", "x"]
    assert retriever.documents[1].metadata == {"m": 1}
    hits = retriever.retrieve("a dict", k=3)
    assert all(isinstance(h, ScoredDocument) for h in hits)
    assert isinstance(retriever, Retriever)


def test_retrieve_batch_matches_retrieve(fitted: ClassifierRetriever) -> None:
    batch = fitted.retrieve_batch(QUESTIONS, k=3)
    for query, hits in zip(QUESTIONS, batch):
        single = fitted.retrieve(query, k=3)
        assert [h.document.id for h in hits] == [h.document.id for h in single]
        # Fused scores are standardised per query, which scales float noise from padding.
        assert [h.score for h in hits] == pytest.approx([h.score for h in single], abs=1e-4)
    assert fitted.retrieve_batch([], k=3) == []


def test_add_documents_retrievable_at_once(fitted: ClassifierRetriever) -> None:
    new = Document(
        id="walrus", text="Assignment expressions use the walrus operator := to bind a name inside an expression."
    )
    before = fitted.retrieve_batch(QUESTIONS, k=1)
    ids = fitted.add_documents([new])
    assert ids == ["walrus"]
    assert fitted.model.head.num_documents == 7
    assert fitted.retrieve(new.text, k=1)[0].document.id == "walrus"
    # Existing rows are untouched: old queries keep their old winners unless the new doc outranks them.
    after = fitted.retrieve_batch(QUESTIONS, k=1)
    assert sum(a[0].document.id == b[0].document.id for a, b in zip(after, before)) >= len(QUESTIONS) - 1
    assert fitted.add_documents(["a plain string doc"]) == ["7"]


def test_add_documents_with_training(tiny_bert: str, corpus: list[Document]) -> None:
    config = FAST.model_copy(update={"new_document_epochs": 1})
    retriever = ClassifierRetriever(tiny_bert, config=config).fit(corpus)
    retriever.add_documents([Document(id="new", text="Generators yield values lazily one at a time.")])
    assert retriever.retrieve("Generators yield values lazily one at a time.", k=1)[0].document.id == "new"


def test_update_learns_feedback_without_forgetting(tiny_bert: str, corpus: list[Document]) -> None:
    # A tiny random encoder has weak features: the larger learning rates give the fit clear margins.
    config = TrainConfig(
        epochs=15, batch_size=8, update_epochs=10, learning_rate=2e-4, head_learning_rate=2e-3, show_progress=False
    )
    retriever = ClassifierRetriever(tiny_bert, config=config).fit(
        corpus, queries=list(zip(QUESTIONS, [d.id for d in corpus]))
    )
    feedback = "how do I run code on several cores at once"
    retriever.update([(feedback, "gil")])
    assert retriever.retrieve(feedback, k=1)[0].document.id == "gil"
    kept = sum(h[0].document.id == d.id for h, d in zip(retriever.retrieve_batch(QUESTIONS, k=1), corpus))
    assert kept >= len(corpus) - 1


@pytest.mark.parametrize("pooling", ["auto", "last", "mean"])
def test_decoder_only_model(tiny_llama: str, corpus: list[Document], pooling: str) -> None:
    retriever = ClassifierRetriever(tiny_llama, pooling=pooling, config=FAST)  # type: ignore[arg-type]
    assert retriever.model.encoder.pooling == ("last" if pooling == "auto" else pooling)
    retriever.fit(corpus)
    assert len(retriever.retrieve("interpreter lock threads", k=2)) == 2


def test_last_token_pooling_ignores_padding(tiny_llama: str) -> None:
    retriever = ClassifierRetriever(tiny_llama, config=FAST)
    alone = retriever.embed_queries(["short text"])
    padded = retriever.embed_queries(["short text", "a much longer text that forces padding of the first one"])[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_thread_safe_retrieval(fitted: ClassifierRetriever) -> None:
    serial = [[h.document.id for h in fitted.retrieve(q, k=3)] for q in QUESTIONS * 4]
    barrier = threading.Barrier(4)

    def work(offset: int) -> list[list[str]]:
        barrier.wait()
        return [[h.document.id for h in fitted.retrieve(q, k=3)] for q in (QUESTIONS * 4)[offset::4]]

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(work, range(4)))
    for offset, part in enumerate(parts):
        assert part == serial[offset::4]


def test_trainable_state_dict_round_trip(fitted: ClassifierRetriever) -> None:
    state = fitted.trainable_state_dict()
    assert set(state) == {"adapter.proj.weight", "adapter.proj.bias", "head.weight"}
    assert fitted.num_trainable_parameters() == sum(t.numel() for t in state.values())
    before = ranking(fitted)
    fitted.load_trainable_state_dict({k: torch.zeros_like(v) for k, v in state.items()})
    fitted.load_trainable_state_dict(state)
    assert ranking(fitted) == before
    with pytest.raises(CheckpointError, match="shape"):
        fitted.load_trainable_state_dict({"head.weight": torch.zeros(2, 2)}, strict=False)
    with pytest.raises(CheckpointError, match="unexpected"):
        fitted.load_trainable_state_dict({"evil": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="NaN"):
        fitted.load_trainable_state_dict({**state, "head.weight": torch.full_like(state["head.weight"], float("nan"))})


def test_head_anchor_limits_row_drift(tiny_bert: str, corpus: list[Document]) -> None:
    """head_anchor pulls rows toward their starting point: a strong anchor keeps them closer."""
    start = ClassifierRetriever(tiny_bert, config=TrainConfig(epochs=0, show_progress=False)).fit(corpus)
    rows0 = start.model.head.weight.detach()
    drift = {}
    for anchor in (0.0, 1000.0):
        config = FAST.model_copy(update={"epochs": 3, "head_learning_rate": 2e-3, "head_anchor": anchor})
        trained = ClassifierRetriever(tiny_bert, config=config).fit(corpus)
        drift[anchor] = float((trained.model.head.weight.detach() - rows0).norm())
    assert 0 < drift[1000.0] < drift[0.0] / 2


def test_loading_a_new_adapter_re_embeds_the_question_rows(tiny_bert: str, corpus) -> None:
    """Question rows live in the adapter's output space: a federated client loads the global
    adapter with ``load_trainable_state_dict``, and its own question rows must follow it."""
    torch.manual_seed(0)
    retriever = ClassifierRetriever(tiny_bert, config=FAST.model_copy(update={"epochs": 0})).fit(corpus)
    retriever.update([("only one thread runs bytecode", "gil")], epochs=0)
    before = retriever.retrieve("only one thread runs bytecode", k=1)[0]
    assert before.document.id == "gil"
    state = retriever.trainable_state_dict()
    moved = {k: v + 0.05 * torch.randn_like(v) if k.startswith("adapter.") else v for k, v in state.items()}
    retriever.load_trainable_state_dict(moved)
    fresh = ClassifierRetriever(tiny_bert, config=FAST.model_copy(update={"epochs": 0})).fit(corpus)
    fresh.load_trainable_state_dict(moved)
    expected = fresh.embed_queries(["only one thread runs bytecode"])
    rows = retriever.serving_rows()
    asked = [i for i, doc in enumerate(rows.document_ids) if doc == "gil"]
    assert any(torch.allclose(rows.vectors[i], expected[0], atol=1e-5) for i in asked)
    assert retriever.retrieve("only one thread runs bytecode", k=1)[0].document.id == "gil"
