"""One SuperNode's view of its deployment: its local retriever, its data, its federated copy.

The deployment's own checkpoint is only ever *read*: the federated copy (the retriever as this
node last trained it) and the privacy ledger live in a separate work dir, so leaving the
federation leaves the local retriever exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from softcar import ClassifierRetriever
from softcar_federated import partitions
from softcar_federated.config import FedConfig, NodeConfig

logger = logging.getLogger(__name__)


def default_output_dir(config: FedConfig, run_id: int | str) -> Path:
    if config.output_dir:
        return Path(config.output_dir).expanduser().resolve()
    return Path(tempfile.gettempdir()) / "softcar-federated" / f"run-{run_id}"


@lru_cache(maxsize=4)
def _cached_split(path: str, heldout_fraction: float, seed: int) -> partitions.SplitDataset:
    return partitions.load_split(path, heldout_fraction, seed)


def dataset_split(config: FedConfig) -> partitions.SplitDataset:
    if not config.dataset:
        raise ValueError("run config 'dataset' is empty: partition mode needs a BEIR folder")
    return _cached_split(str(Path(config.dataset).expanduser().resolve()), config.heldout_fraction, config.seed)


@dataclass
class LocalDeployment:
    """A node's retriever, what it trains on and evaluates on, and where its state lives."""

    retriever: ClassifierRetriever
    own_doc_ids: list[str] | None
    feedback: list[partitions.Pair]
    heldout: list[partitions.Pair]
    work_dir: Path
    saved: tuple = field(default=(), compare=False)
    """Fingerprint of the federated copy on disk as this object last read or wrote it."""

    @property
    def copy_dir(self) -> Path:
        return self.work_dir / "retriever"

    @property
    def ledger_path(self) -> Path:
        return self.work_dir / "privacy-ledger.json"

    def examples(self) -> list[tuple[str, int]]:
        return partitions.local_examples(self.retriever, self.own_doc_ids, self.feedback)

    def save_copy(self) -> None:
        self.retriever.save(self.copy_dir)
        self.saved = copy_fingerprint(self.copy_dir)

    @classmethod
    def open(cls, config: FedConfig, node: NodeConfig, run_id: int | str) -> LocalDeployment:
        """Load the federated copy if this node trained before, else the deployment's model."""
        if node.checkpoint is not None:
            checkpoint = Path(node.checkpoint).expanduser().resolve()
            key = hashlib.sha256(str(checkpoint).encode()).hexdigest()[:16]
            work_dir = (
                Path(node.work_dir)
                if node.work_dir
                else Path(tempfile.gettempdir()) / "softcar-federated" / f"node-{key}"
            )
            feedback = partitions.read_pairs(node.feedback) if node.feedback else []
            heldout = partitions.read_pairs(node.heldout) if node.heldout else []
            own: list[str] | None = None
            base_path: Path | None = checkpoint
            documents = None
        else:
            assert node.partition_id is not None and node.num_partitions is not None
            split = dataset_split(config)
            part = partitions.partition(split, node.num_partitions, config.iid, config.seed)[node.partition_id]
            out = default_output_dir(config, run_id)
            work_dir = Path(node.work_dir) if node.work_dir else out / f"node-{node.partition_id}"
            feedback, heldout = part.feedback, part.heldout
            if config.mode == "adapter+head":  # one shared document-id space: index everything
                documents = split.corpus
                own = part.doc_ids
            else:  # this deployment's own corpus and head
                wanted = set(part.doc_ids)
                documents = [d for d in split.corpus if d.id in wanted]
                own = None
            base_path = None
        work_dir.mkdir(parents=True, exist_ok=True)
        copy_dir = work_dir / "retriever"
        if (copy_dir / "softcar.json").is_file():
            retriever = ClassifierRetriever.load(copy_dir, show_progress=False)
        elif base_path is not None:
            retriever = ClassifierRetriever.load(base_path, show_progress=False)
        else:
            retriever = partitions.build_retriever(
                documents or [],
                config.encoder,
                config.adapter,
                max_query_length=config.max_query_length,
                pseudo_queries=config.pseudo_queries_per_document,
                seed=config.seed,
            )
            if config.local_question_rows and feedback:
                # The deployment's own questions as question rows, found again at once: they stay
                # on this node (never in an update) and training never sees them (no DP cost).
                retriever.update(feedback, epochs=0)
                if own is not None:
                    # Its users ask about its own documents, not evenly about the whole shared
                    # index: calibrate question rows for the share of those that have feedback.
                    asked = {doc_id for _, doc_id in feedback} & set(own)
                    retriever.rescore(
                        retriever.config.scoring.model_copy(update={"feedback_coverage": len(asked) / len(own)})
                    )
        logger.info(
            "node %s: %d documents, %d feedback, %d held-out (work dir %s)",
            os.getpid(),
            len(retriever),
            len(feedback),
            len(heldout),
            work_dir,
        )
        return cls(
            retriever=retriever,
            own_doc_ids=own,
            feedback=feedback,
            heldout=heldout,
            work_dir=work_dir,
            saved=copy_fingerprint(copy_dir),
        )


def copy_fingerprint(folder: Path) -> tuple:
    """(name, size, mtime) of every file of a federated copy: changes whenever anyone rewrites it."""
    if not folder.is_dir():
        return ()
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


CACHE_SIZE = 4
"""Deployments kept loaded per process (each holds an encoder: bounded for simulation actors
that serve many virtual nodes)."""

_OPEN: OrderedDict[str, LocalDeployment] = OrderedDict()


def _cache_key(config: FedConfig, node: NodeConfig, run_id: int | str) -> str:
    return json.dumps([str(run_id), config.model_dump(mode="json"), node.model_dump(mode="json")], sort_keys=True)


def open_deployment(config: FedConfig, node: NodeConfig, run_id: int | str) -> LocalDeployment:
    """:meth:`LocalDeployment.open`, but reused within this process across rounds.

    Why: loading the encoder and building (or reading) the retriever every round is pure
    overhead where the process lives on (Flower's simulation engine keeps its ClientApp actors;
    in-process use). The cached object is used only while the federated copy on disk is the one
    it last read or wrote; otherwise (another process trained this node meanwhile) it is reloaded.
    """
    key = _cache_key(config, node, run_id)
    cached = _OPEN.get(key)
    if cached is not None and cached.saved == copy_fingerprint(cached.copy_dir):
        _OPEN.move_to_end(key)
        logger.debug("node %s: reusing the loaded deployment", os.getpid())
        return cached
    deployment = LocalDeployment.open(config, node, run_id)
    _OPEN[key] = deployment
    _OPEN.move_to_end(key)
    while len(_OPEN) > CACHE_SIZE:
        _OPEN.popitem(last=False)
    return deployment


def forget_deployment(config: FedConfig, node: NodeConfig, run_id: int | str) -> None:
    """Drop a cached deployment (after a failed round its in-memory model may be half-trained)."""
    _OPEN.pop(_cache_key(config, node, run_id), None)


def clear_deployment_cache() -> None:
    """Drop every cached deployment (tests, and the overhead benchmark's 'reload' rows)."""
    _OPEN.clear()
