"""The full fine-tuning reference: every weight of the same encoder trained with
sentence-transformers' ``MultipleNegativesRankingLoss`` through :class:`softcar.Trainer`, on
exactly the ``(text, document)`` examples softcar's ``fit`` trains on; then inner-product
search over its document embeddings."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .datasets import eval_splits, load_dataset
from .jobs import evaluate_splits, setup_worker, train_config
from .measure import PeakMemory, training_callbacks, training_figures


def load_sentence_transformer() -> Any:
    from sentence_transformers import SentenceTransformer

    from softcar import default_encoder_path

    return SentenceTransformer(str(default_encoder_path()), device="cpu")


class MnrlLoss:
    """``loss(model, batch)`` for the Trainer around sentence-transformers' MNRL module.

    ``batch``: ``{"queries": features, "documents": features}``; in-batch documents of the
    other queries are the negatives.
    """

    def __init__(self, model: Any) -> None:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        self.module = MultipleNegativesRankingLoss(model)

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        return self.module([batch["queries"], batch["documents"]], None)


def no_duplicate_batches(labels: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches in which no document appears twice (in-batch negatives stay negative)."""
    pending = deque(rng.sample(range(len(labels)), len(labels)))
    batches = []
    while pending:
        batch: list[int] = []
        seen: set[int] = set()
        skipped: list[int] = []
        while pending and len(batch) < batch_size:
            i = pending.popleft()
            if labels[i] in seen:
                skipped.append(i)
            else:
                batch.append(i)
                seen.add(labels[i])
        pending.extendleft(reversed(skipped))
        batches.append(batch)
    return batches


class MnrlBatches:
    """Tokenised MNRL batches, reshuffled each epoch with ``seed + epoch`` (as softcar's loader)."""

    def __init__(
        self, model: Any, examples: Sequence[tuple[str, str]], labels: Sequence[int], batch_size: int, seed: int
    ) -> None:
        self.model, self.examples, self.labels = model, examples, labels
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def _features(self, texts: list[str], max_length: int) -> dict[str, Any]:
        self.model.max_seq_length = max_length
        return dict(self.model.tokenize(texts))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        for batch in no_duplicate_batches(self.labels, self.batch_size, rng):
            yield {
                "queries": self._features([self.examples[i][0] for i in batch], 64),
                "documents": self._features([self.examples[i][1] for i in batch], 256),
            }


class SentenceTransformerRetriever:
    """Inner-product search over a (fine-tuned) SentenceTransformer's embeddings (duck-typed
    ``retrieve`` / ``retrieve_batch`` / ``documents``, enough for :func:`softcar.evaluate`)."""

    def __init__(self, model: Any, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self._documents: list[Any] = []
        self._matrix: Any = None

    @property
    def documents(self) -> list[Any]:
        return list(self._documents)

    def _encode(self, texts: list[str], max_length: int) -> Any:
        self.model.max_seq_length = max_length
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )

    def fit(self, documents: list[Any], queries: Any = None) -> SentenceTransformerRetriever:
        self._documents = list(documents)
        self._matrix = self._encode([d.text for d in self._documents], 256)
        return self

    def retrieve(self, query: str, k: int = 4) -> list[Any]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int = 4) -> list[list[Any]]:
        import torch

        from softcar import ScoredDocument

        scores = self._encode(list(queries), 64) @ self._matrix.T
        top = torch.topk(scores, min(k, len(self._documents)), dim=1)
        hits = zip(top.values.cpu().tolist(), top.indices.cpu().tolist(), strict=True)
        return [
            [ScoredDocument(document=self._documents[i], score=float(s)) for s, i in zip(vs, ix, strict=True)]
            for vs, ix in hits
        ]


@dataclass
class FullFineTuneJob:
    """Every encoder weight trains with MNRL on ``fit``'s examples (head rows → document texts)."""

    dataset: str
    setting: str
    train: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    lr: float = 2e-5
    threads: int = 1
    max_docs: int | None = None

    def describe(self) -> str:
        return f"full_ft {self.dataset} {self.setting} ({self.epochs} epochs)"

    def run(self) -> dict[str, Any]:
        setup_worker(self.threads)
        import torch

        from softcar import ClassifierRetriever, Trainer

        data = load_dataset(self.dataset, self.max_docs)
        pairs = data.train_pairs if self.setting == "B" else None
        # epochs=0: fit only indexes, so training_examples gives exactly what softcar's fit trains on.
        probe = ClassifierRetriever(config=train_config({**self.train, "epochs": 0})).fit(data.corpus, pairs)
        rows = probe.training_examples(pairs)
        doc_texts = [d.text for d in probe.documents]
        del probe
        cfg = train_config(self.train)
        examples = [(text, doc_texts[row]) for text, row in rows]

        torch.manual_seed(cfg.seed)
        model = load_sentence_transformer()
        clock, steps = training_callbacks()
        trainer = Trainer(
            model, torch.optim.AdamW(model.parameters(), lr=self.lr), MnrlLoss(model), callbacks=[clock, steps]
        )
        batches = MnrlBatches(model, examples, [row for _, row in rows], cfg.batch_size, cfg.seed)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        with PeakMemory() as memory:
            trainer.train(batches, self.epochs)
        retriever = SentenceTransformerRetriever(model).fit(data.corpus)
        return {
            **training_figures(clock, steps),
            "memory": memory.result(),
            "trainable_params": trainable,
            "metrics": evaluate_splits(retriever, data, eval_splits(self.setting)),
        }
