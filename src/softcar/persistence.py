"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a folder with ``softcar.json`` (a manifest: format, kind, config, encoder
identity, SHA-256 of every other file) plus the files it lists. ``save`` writes a sibling
temporary folder, fsyncs it, then swaps it in with renames, so a crash mid-save leaves the
previous checkpoint intact. No pickle is read or written anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softcar.documents import Document
from softcar.errors import CheckpointNotFoundError, CorruptCheckpointError
from softcar.version import __version__

MANIFEST = "softcar.json"
FORMAT = "softcar-checkpoint"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``target`` in one swap of renames."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise CheckpointNotFoundError(f"cannot save to {str(target)!r}: it exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        backup = None
        if target.exists():
            backup = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, backup)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"inf"``, ``"-inf"``; NaN as null): strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 2) -> None:
    """Write JSON atomically (temporary sibling, fsync, rename): a reader never sees half a file.

    The one JSON writer of softcar: logs, ledgers, benchmark results. Non-finite floats are
    written as strings (see :func:`jsonable`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(jsonable(payload), handle, indent=indent, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_documents(path: Path, documents: Sequence[Document]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for doc in documents:
            handle.write(json.dumps(doc.model_dump(), ensure_ascii=False) + "\n")


def read_jsonl(path: Path, error: type[Exception] = CorruptCheckpointError) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped); ``error`` names the bad line.

    A missing file raises ``error`` too; a line that is not UTF-8, not JSON or not an object is
    reported with its number.
    """
    rows: list[dict[str, Any]] = []
    line_no = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):  # noqa: B007 - read in the except clause below
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not a JSON object")
                    rows.append(row)
    except FileNotFoundError as exc:
        raise error(f"{path} does not exist") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        # A decoding error surfaces while reading line ``line_no + 1``.
        where = line_no + 1 if isinstance(exc, UnicodeDecodeError) else line_no
        raise error(f"{path}: line {where} is not valid UTF-8 JSON: {exc}") from exc
    return rows


def read_documents(path: Path) -> list[Document]:
    """Documents written by :func:`write_documents`; a bad line is a ``CorruptCheckpointError``."""
    documents = []
    for position, row in enumerate(read_jsonl(path), 1):
        try:
            documents.append(Document.model_validate(row))
        except ValueError as exc:
            raise CorruptCheckpointError(f"{path}: document {position} is not valid: {exc}") from exc
    return documents


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def write_manifest(folder: Path, kind: str, payload: dict[str, Any]) -> None:
    """Write ``softcar.json`` last, with checksums of every file already in ``folder``."""
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.name != MANIFEST}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "softcar_version": __version__,
        **payload,
        "files": files,
    }
    write_json(folder / MANIFEST, manifest)


def read_manifest(folder: str | os.PathLike[str], expected_kind: str | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint's manifest and the checksums of the files it lists."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint folder at {str(folder)!r}")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointNotFoundError(f"{str(folder)!r} is not a softcar checkpoint: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{manifest_path} is not a softcar checkpoint manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptCheckpointError(f"{manifest_path}: unsupported format_version {manifest.get('format_version')!r}")
    if expected_kind is not None and manifest.get("kind") != expected_kind:
        raise CorruptCheckpointError(
            f"{str(folder)!r} holds a {manifest.get('kind')!r} retriever, not a {expected_kind!r} one"
        )
    for name, checksum in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointNotFoundError(f"checkpoint {str(folder)!r} is missing {name}")
        if sha256_file(path) != checksum:
            raise CorruptCheckpointError(f"checkpoint file {path} is corrupted (checksum mismatch)")
    return manifest
