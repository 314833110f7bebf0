"""softcar: a frozen small language model with a soft-embedding adapter, used as a classifier
over document ids: a retriever that adapts to private corpora on small machines."""

from __future__ import annotations

__version__ = "0.1.0"

from softcar.baselines import BM25Retriever, InnerProductRetriever, load_retriever
from softcar.config import RetrieverConfig, TrainConfig
from softcar.documents import Document, ScoredDocument
from softcar.interface import Retriever
from softcar.retriever import ClassifierRetriever

__all__ = [
    "BM25Retriever",
    "ClassifierRetriever",
    "Document",
    "InnerProductRetriever",
    "Retriever",
    "RetrieverConfig",
    "ScoredDocument",
    "TrainConfig",
    "__version__",
    "load_retriever",
]
