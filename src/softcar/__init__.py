"""softcar: a frozen small language model with a soft-embedding adapter, used as a classifier
over document ids: a retriever that adapts to private corpora on small machines.

Everything the integrations, the federated app and users need is re-exported here; other
modules are implementation detail unless their docstring says otherwise (``softcar.errors`` is
public).
"""

from __future__ import annotations

from softcar.base import BaseRetriever, load_retriever, retriever_kinds
from softcar.baselines import BM25Retriever, InnerProductRetriever
from softcar.config import RetrieverConfig, ScoringConfig, TrainConfig
from softcar.data import BeirDataset, load_beir, load_jsonl_documents, packaged_dataset_path
from softcar.documents import Document, DocumentLike, ScoredDocument, coerce_documents
from softcar.encoder import default_encoder_path
from softcar.evaluation import evaluate, query_latency, run_retrieval, score_run
from softcar.head_index import HeadIndex, IndexMiner
from softcar.interface import Retriever
from softcar.losses import ClassificationLoss
from softcar.model import ClassifierHead, SoftcarModel
from softcar.persistence import atomic_directory, jsonable, write_json, write_tensors
from softcar.query_generation import QUESTION_PROMPT, QueryGenerator, parse_questions
from softcar.question_rows import QuestionRows
from softcar.regularizers import HeadAnchor, ProximalTerm, SparseHeadAnchor
from softcar.report import format_table
from softcar.retriever import ClassifierRetriever, TrainingSetup
from softcar.sampled_softmax import ExactMiner, HardNegativeMiner, SampledSoftmaxLoss
from softcar.sparse_adam import RowSparseAdam
from softcar.trainer import ProgressBar, Regularizer, StepTimer, Trainer, TrainerCallback, TrainResult
from softcar.validation import TrainingPair, normalize_pairs, validate_k, validate_queries, validate_query
from softcar.vector_rows import ServingRows, VectorRow, VectorRows, augment_queries
from softcar.version import __version__

__all__ = [
    "BM25Retriever",
    "ExactMiner",
    "HardNegativeMiner",
    "RowSparseAdam",
    "SampledSoftmaxLoss",
    "SparseHeadAnchor",
    "ClassificationLoss",
    "ClassifierHead",
    "HeadAnchor",
    "ProgressBar",
    "QUESTION_PROMPT",
    "QuestionRows",
    "QueryGenerator",
    "ProximalTerm",
    "Regularizer",
    "StepTimer",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "TrainingSetup",
    "BaseRetriever",
    "BeirDataset",
    "ClassifierRetriever",
    "Document",
    "DocumentLike",
    "HeadIndex",
    "IndexMiner",
    "InnerProductRetriever",
    "Retriever",
    "RetrieverConfig",
    "ScoredDocument",
    "ScoringConfig",
    "ServingRows",
    "SoftcarModel",
    "TrainConfig",
    "TrainingPair",
    "VectorRow",
    "VectorRows",
    "__version__",
    "atomic_directory",
    "augment_queries",
    "coerce_documents",
    "default_encoder_path",
    "evaluate",
    "format_table",
    "jsonable",
    "load_beir",
    "load_jsonl_documents",
    "load_retriever",
    "normalize_pairs",
    "packaged_dataset_path",
    "parse_questions",
    "query_latency",
    "retriever_kinds",
    "run_retrieval",
    "score_run",
    "validate_k",
    "validate_queries",
    "validate_query",
    "write_json",
    "write_tensors",
]
