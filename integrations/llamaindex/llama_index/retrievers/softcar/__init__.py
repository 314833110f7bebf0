"""LlamaIndex integration for softcar: ``from llama_index.retrievers.softcar import ClassifierRetriever``."""

from __future__ import annotations

from llama_index.retrievers.softcar.base import ClassifierRetriever, question_generator
from llama_index.retrievers.softcar.dataset import finetune_dataset_parts, training_pairs
from llama_index.retrievers.softcar.evaluation import aevaluate_retriever, evaluate_retriever
from llama_index.retrievers.softcar.vector_store import SoftcarVectorIndex, SoftcarVectorStoreRetriever

__all__ = [
    "ClassifierRetriever",
    "SoftcarVectorIndex",
    "SoftcarVectorStoreRetriever",
    "aevaluate_retriever",
    "evaluate_retriever",
    "finetune_dataset_parts",
    "question_generator",
    "training_pairs",
]
