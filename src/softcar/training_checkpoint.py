"""Resumable training: an atomic checkpoint of a :class:`~softcar.trainer.Trainer` run.

``fit(..., checkpoint_dir=...)`` writes one every ``TrainConfig.checkpoint_every_steps`` steps
and when training ends: a folder (``softcar.persistence.atomic_directory``, so a crash mid-write
keeps the previous one) with the parameters, optimizer state and random streams in safetensors
and the position plus an *identity* in JSON. The identity records what the run depends on
(documents, training examples, configuration, base encoder); resuming with any of them
different raises :class:`CheckpointMismatchError` naming it, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from softcar.errors import CheckpointError, CheckpointMismatchError, CorruptCheckpointError
from softcar.persistence import MANIFEST, atomic_directory, read_manifest, read_tensors, write_manifest, write_tensors
from softcar.trainer import Trainer, TrainerCallback

logger = logging.getLogger(__name__)

KIND = "training-state"
STATE_FILE = "training_state.safetensors"


def digest(items: Iterable[Any]) -> str:
    """SHA-256 over the JSON of each item, in order: an identity of documents or examples."""
    hasher = hashlib.sha256()
    for item in items:
        hasher.update(json.dumps(item, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        hasher.update(b"\n")
    return hasher.hexdigest()


def exists(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a checkpoint; a non-empty folder that holds none is an error.

    Checkpoints replace their folder, so a folder of other files is never used as one.
    """
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return True
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CheckpointError(
            f"checkpoint_dir {str(folder)!r} exists and is not a softcar training checkpoint; refusing to overwrite it"
        )
    return False


def read_identity(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The identity recorded in a training checkpoint (checksums verified)."""
    manifest = read_manifest(folder, expected_kind=KIND)
    identity = manifest.get("identity")
    if not isinstance(identity, dict):
        raise CorruptCheckpointError(f"{folder}: training checkpoint has no identity")
    return identity


def check_identity(folder: str | os.PathLike[str], expected: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` naming every part of ``expected`` that differs."""
    found = read_identity(folder)
    differences = []
    for key, value in expected.items():
        if key not in found:
            differences.append(f"{key} (not recorded)")
        elif isinstance(value, Mapping) and isinstance(found[key], Mapping):
            fields = sorted(k for k in set(value) | set(found[key]) if value.get(k) != found[key].get(k))
            if fields:
                details = ", ".join(f"{k}: {found[key].get(k)!r} -> {value.get(k)!r}" for k in fields)
                differences.append(f"{key} ({details})")
        elif found[key] != value:
            differences.append(key)
    if differences:
        raise CheckpointMismatchError(
            f"training checkpoint {str(folder)!r} was made with different {'; '.join(differences)}; "
            "use another checkpoint_dir (nothing was overwritten)"
        )


def save(folder: str | os.PathLike[str], trainer: Trainer, identity: Mapping[str, Any]) -> None:
    tensors, meta = trainer.state_dict()
    with atomic_directory(folder) as tmp:
        write_tensors(tmp / STATE_FILE, tensors)
        write_manifest(tmp, KIND, {"identity": dict(identity), "trainer": meta})
    logger.info("training checkpoint at step %d written to %s", trainer.global_step, folder)


def restore(folder: str | os.PathLike[str], trainer: Trainer, identity: Mapping[str, Any]) -> None:
    """Check the identity, then load the trainer's state from ``folder``."""
    check_identity(folder, identity)
    manifest = read_manifest(folder, expected_kind=KIND)
    try:
        trainer.load_state_dict(read_tensors(Path(folder) / STATE_FILE), manifest["trainer"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CorruptCheckpointError(f"{folder}: training state does not fit this run: {exc}") from exc
    logger.info("resuming from step %d (%s)", trainer.global_step, folder)


class Checkpointer(TrainerCallback):
    """Write a training checkpoint every ``every`` steps and when training completes."""

    def __init__(self, folder: str | os.PathLike[str], every: int, identity: Mapping[str, Any]) -> None:
        self.folder, self.every, self.identity = Path(folder), every, dict(identity)

    def on_step_end(self, trainer: Trainer, loss: float, batch_size: int, seconds: float) -> None:
        if trainer.global_step % self.every == 0:
            save(self.folder, trainer, self.identity)

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.finished:
            save(self.folder, trainer, self.identity)
