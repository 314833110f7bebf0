"""LangChain integration for softcar: ``from langchain_softcar import ClassifierRetriever``."""

from __future__ import annotations

from importlib import metadata

from langchain_softcar.retrievers import ClassifierRetriever, question_generator
from langchain_softcar.vector_store import SoftcarEmbeddings, SoftcarVectorIndex, SoftcarVectorStoreRetriever

try:
    __version__ = metadata.version("langchain-softcar")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "ClassifierRetriever",
    "SoftcarEmbeddings",
    "SoftcarVectorIndex",
    "SoftcarVectorStoreRetriever",
    "__version__",
    "question_generator",
]
