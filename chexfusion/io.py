"""Atomic file writes (a crash never leaves a half-written file under its final name), and the check every
writing command makes of its output path before it starts work."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and a writer that replaces the file (safetensors does) makes its own: every result
        # gets the mode any other file gets, set on what was actually written
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path`` (which must not exist) in one
    rename, so a reader never sees a half-written folder; on failure it is removed."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, a file path that the command could not write at the end.

    An existing folder where a file is expected, a path under a file, and a folder the user cannot write into
    are each one line naming ``option`` and the path, so an hour of inference is not lost to a typo at the
    last step. The folders up to the file are created by the write itself, so they need not exist yet.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give the name of the file to write")
    _check_creatable(path.parent, path, option)
    return path


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """As :func:`check_output_file`, for a folder a command writes its files into (created if absent)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: exists and is not a folder")
    _check_creatable(path, path, option)
    return path


def _check_creatable(folder: Path, target: Path, option: str) -> None:
    """The nearest existing folder at or above ``folder`` must be a folder the user may write into."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {target}: cannot write into the folder {existing} (permission denied)")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def file_digest(path: str | Path, digest) -> str:
    """Hex digest of a file's bytes through ``digest`` (a fresh hashlib-style object: ``update``, ``hexdigest``).

    The file is memory-mapped, not read: the hash reads the page cache in place instead of after a copy into a
    buffer, which for a fast hash (XXH3) is most of the cost.
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size:  # an empty file cannot be mapped (and adds nothing to the hash)
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                digest.update(mapped)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes: the content hash run folders and feature stores use to recognise weights."""
    return file_digest(path, hashlib.sha256())
