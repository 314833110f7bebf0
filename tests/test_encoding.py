"""Batched encoding (softcar.encoder.embed_texts): length-sorted batches, results in input order."""

from __future__ import annotations

import pytest
import torch

from softcar import ClassifierRetriever, Document, InnerProductRetriever, TrainConfig
from softcar.encoder import embed_texts, length_sorted_batches

TEXTS = [
    "short",
    "a much longer text " * 20,
    "medium length text about packages",
    "x",
    "another long one with many many words " * 10,
    "two words",
]


def test_batches_cover_every_text_once_within_limits() -> None:
    lengths = [5, 300, 40, 1, 90, 12, 12, 7, 250]
    batches = length_sorted_batches(lengths, max_count=3, max_tokens=400)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 400
    firsts = [lengths[batch[0]] for batch in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first: the memory peak comes first


def test_a_text_longer_than_the_token_budget_still_gets_a_batch() -> None:
    assert length_sorted_batches([1000, 3], max_count=8, max_tokens=100) == [[0], [1]]


@pytest.mark.parametrize("encoder", ["tiny_bert", "tiny_llama"])
@pytest.mark.parametrize(("batch_size", "batch_tokens"), [(2, None), (4, 64), (64, 4096)])
def test_sorted_batches_return_each_texts_own_vector(
    encoder: str, batch_size: int, batch_tokens: int | None, request: pytest.FixtureRequest
) -> None:
    retriever = ClassifierRetriever(request.getfixturevalue(encoder), config=TrainConfig(show_progress=False))
    model, tokenizer = retriever.model, retriever.tokenizer
    one_by_one = torch.cat(
        [
            embed_texts(model.embed, tokenizer, [text], max_length=32, batch_size=1, device=retriever.device)
            for text in TEXTS
        ]
    )
    batched = embed_texts(
        model.embed,
        tokenizer,
        TEXTS,
        max_length=32,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        device=retriever.device,
    )
    assert batched.shape == one_by_one.shape
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-4)


def test_frozen_retriever_ranks_the_same_whatever_the_batching(tiny_bert: str) -> None:
    docs = [Document(id=str(i), text=text) for i, text in enumerate(TEXTS)]
    small = InnerProductRetriever(tiny_bert, batch_size=2, batch_tokens=None, show_progress=False).fit(docs)
    large = InnerProductRetriever(tiny_bert, show_progress=False).fit(docs)
    for query in ("long text", "two", "packages"):
        ranked = [[d.document.id for d in r.retrieve(query, k=6)] for r in (small, large)]
        assert ranked[0] == ranked[1]


@pytest.mark.parametrize("encoder", ["tiny_bert", "tiny_llama"])
def test_bfloat16_encoding_gives_float32_vectors_close_to_float32(encoder: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(encoder)
    exact, fast = (
        ClassifierRetriever(path, config=TrainConfig(show_progress=False, encode_dtype=dtype)).embed_documents(TEXTS)
        for dtype in ("float32", "bfloat16")
    )
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)  # autocast really ran
    assert torch.nn.functional.cosine_similarity(fast, exact).min() > 0.99
