"""Training examples for the classifier: ``(text, head row)`` pairs, tokenised once, batched.

Three sources feed the head: spans of each document (pseudo-queries, so no labels are needed),
labelled or feedback ``(query, doc_id)`` pairs, and replay of older examples during incremental
training so the rest of the corpus is not forgotten.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from softcar.config import TrainConfig
from softcar.documents import Document
from softcar.errors import UnknownDocumentError
from softcar.pseudo_queries import pseudo_queries
from softcar.validation import TrainingPair

Example = tuple[str, int]
"""``(text, head row)``: a training query and the row of its document."""


def pairs_to_rows(pairs: Sequence[TrainingPair], row_of: Mapping[str, int]) -> list[Example]:
    """Map validated ``(query, doc_id)`` pairs to head rows; unknown ids are a typed error."""
    out = []
    for position, (text, doc_id) in enumerate(pairs):
        if doc_id not in row_of:
            raise UnknownDocumentError(f"training pair at position {position} names unknown document id {doc_id!r}")
        out.append((text, row_of[doc_id]))
    return out


def span_examples(documents: Sequence[Document], rows: Sequence[int], config: TrainConfig, seed: int) -> list[Example]:
    """Pseudo-queries (sentences / word spans) of ``documents[row]`` for each row, plus the text."""
    rng = random.Random(seed)
    rows = list(rows)
    with_text: set[int] | None = None
    cap = config.max_document_text_examples
    if config.include_document_text and cap is not None and len(rows) > cap:
        # A separate stream, so spans are the same with or without the cap.
        with_text = set(random.Random(seed + 1).sample(rows, cap))
    examples: list[Example] = []
    for row in rows:
        text = documents[row].text
        for span in pseudo_queries(
            text, config.pseudo_queries_per_document, rng, config.span_min_words, config.span_max_words
        ):
            examples.append((span, row))
        if config.include_document_text and (with_text is None or row in with_text):
            examples.append((text, row))
    return examples


def within_budget(examples: Sequence[Example], epochs: int, budget: int | None, seed: int) -> tuple[list[Example], int]:
    """``(examples, epochs)`` that see at most ``budget`` examples in all.

    Fewer epochs first; a single epoch over more than ``budget`` examples becomes one epoch
    over a uniform random subset of ``budget`` of them. Small runs are returned unchanged.
    """
    examples = list(examples)
    if budget is None or epochs <= 0 or len(examples) * epochs <= budget:
        return examples, epochs
    if len(examples) <= budget:
        return examples, max(1, budget // len(examples))
    return random.Random(seed).sample(examples, budget), 1


def replay_examples(
    documents: Sequence[Document], feedback: Sequence[Example], count: int, config: TrainConfig, seed: int
) -> list[Example]:
    """Old examples to mix into incremental training: earlier feedback first, then spans."""
    rng = random.Random(seed)
    old = rng.sample(list(feedback), min(count, len(feedback)))
    spans = span_examples(documents, range(len(documents)), config, rng.randrange(1 << 30))
    return old + rng.sample(spans, min(max(count - len(old), count // 2), len(spans)))


class ExampleDataset(Dataset):
    """Examples tokenised once (no padding); items are ``(input_ids, label)`` tensors.

    Tensors, not lists, so that Opacus' Poisson loader can build empty batches of the right
    dtype from the first item.
    """

    def __init__(self, examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        encoded = tokenizer([text for text, _ in examples], truncation=True, max_length=max_length)
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in encoded["input_ids"]]
        self.labels = torch.tensor([row for _, row in examples], dtype=torch.long)
        self.pad_token_id = int(tokenizer.pad_token_id or 0)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[index], self.labels[index]

    def collate(self, items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad to the longest item of the batch."""
        input_ids, attention_mask = pad_batch([ids for ids, _ in items], self.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.stack([y for _, y in items])}


def pad_batch(
    sequences: Sequence[Sequence[int] | torch.Tensor], pad_token_id: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences → ``(input_ids, attention_mask)``, padded to the longest on the right
    (or the left: decoder-only tokenizers pad there so the last position is a real token)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length examples: far less padding through the frozen SLM.

    Each epoch reshuffles with ``seed + epoch``, so a run is reproducible.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 16) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The order of the next pass is that of ``epoch`` (what a resumed run replays)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        rng.shuffle(batches)
        return iter(batches)


def example_loader(dataset: ExampleDataset, batch_size: int, seed: int = 0) -> DataLoader[Any]:
    """A DataLoader of length-bucketed, padded batches (``input_ids``, ``attention_mask``, ``labels``)."""
    sampler = LengthBucketBatchSampler([len(ids) for ids in dataset.input_ids], batch_size, seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate)
