"""Typed errors.

Every error softcar raises on bad input derives from :class:`SoftcarError` *and* from the
built-in exception a caller would naturally catch (``ValueError``, ``TypeError`` or
``OSError``), so both ``except softcar.errors.EmptyQueryError`` and ``except ValueError`` work.
"""

from __future__ import annotations


class SoftcarError(Exception):
    """Base class of every error raised by softcar."""


class NotFittedError(SoftcarError, ValueError):
    """The retriever has no documents yet: call ``fit`` first."""


class EmptyCorpusError(SoftcarError, ValueError):
    """``fit`` was given no documents."""


class EmptyDocumentError(SoftcarError, ValueError):
    """A document has empty or whitespace-only text."""


class DuplicateDocumentIdError(SoftcarError, ValueError):
    """Two documents share an id (within one call or against the store)."""


class InvalidDocumentError(SoftcarError, TypeError):
    """A document is neither a ``Document``, a ``str`` nor a mapping with ``text``."""


class EmptyQueryError(SoftcarError, ValueError):
    """A query is empty or whitespace only."""


class InvalidQueryError(SoftcarError, TypeError):
    """A query is not a string."""


class InvalidKError(SoftcarError, ValueError):
    """``k`` is not a positive integer."""


class UnknownDocumentError(SoftcarError, ValueError):
    """A training pair names a document id that is not in the store."""


class InvalidTrainingPairError(SoftcarError, TypeError):
    """A training pair is not a ``(query_text, doc_id)`` pair of strings."""


class CheckpointError(SoftcarError, OSError):
    """A checkpoint cannot be read or written."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory or one of its files does not exist."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is unreadable, fails its checksum or has inconsistent contents."""


class EncoderMismatchError(CheckpointError, ValueError):
    """A checkpoint was trained on another base encoder than the one given."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A training checkpoint was made with other documents, examples or configuration."""


class IndexMismatchError(CorruptCheckpointError):
    """A saved ANN index does not match the head it is loaded with (row count or fingerprint)."""


class InvalidVectorsError(SoftcarError, ValueError):
    """Precomputed document vectors have the wrong shape or are not finite."""


class VectorStoreError(SoftcarError, TypeError):
    """An object given as softcar's vector store is not usable as one (wrong type or embeddings)."""


class VectorSearchUnsupportedError(VectorStoreError):
    """A vector store given as softcar's index cannot search by vector."""


class DatasetError(SoftcarError, OSError):
    """A dataset folder or file is missing or malformed."""


class QueryGenerationError(SoftcarError, RuntimeError):
    """A query generator gave no usable question for any document."""
