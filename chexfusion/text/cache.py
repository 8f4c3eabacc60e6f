"""On-disk cache of class-name embeddings, so an unchanged setup never loads the text model.

One safetensors file per *setup*: the encoder's identity (folder and content ids
of its files), the pooling, the template and whether synonyms are used. The file
name is the sha256 of that setup, which is also written into the file's metadata
so a person can tell what a file holds. Inside, one float32 vector per class
name, stored together with the sha256 of the exact sentences it was averaged
from: when a class's synonyms change in the table, only that class is
re-encoded, and a new class name in the list encodes just that name.

The cache is only an accelerator. A file that cannot be read or does not hold
what it should (a crash of another tool, a disk error, a hand edit) is reported
as a warning and recomputed, never trusted and never fatal. Writes are atomic;
two processes filling the same file at once simply keep the last writer's
entries, and the other entries are recomputed next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_path

log = logging.getLogger(__name__)

FORMAT = "chexfusion-text-embeddings/1"
CACHE_ENV = "CHEXFUSION_CACHE"


@dataclass(frozen=True)
class CachedClass:
    texts_sha256: str
    vector: np.ndarray  # [D] float32, unit norm


def default_cache_dir() -> Path:
    """``$CHEXFUSION_CACHE/text`` if that variable is set, else ``~/.cache/chexfusion/text``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "chexfusion"
    return base / "text"


def digest(obj) -> str:
    """sha256 of a JSON-able object, independent of dict order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def cache_file(cache_dir: str | Path, setup: dict) -> Path:
    return Path(cache_dir).expanduser() / f"{digest(setup)}.safetensors"


def read_entries(path: Path) -> dict[str, CachedClass]:
    """The classes cached in ``path``; empty if the file is absent, and (with a warning) if it is unusable."""
    if not path.exists():
        return {}
    try:
        return _read(path)
    except Exception as error:  # noqa: BLE001 - any unreadable cache file is recomputed, whatever broke it
        log.warning("text embedding cache %s is unusable (%s): recomputing it", path, str(error).splitlines()[0])
        return {}


def _read(path: Path) -> dict[str, CachedClass]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format is {metadata.get('format')!r}, expected {FORMAT!r}")
        hashes = json.loads(metadata["texts_sha256"])
        if set(hashes) != set(handle.keys()):
            raise ValueError("class list and stored vectors disagree")
        entries = {name: CachedClass(hashes[name], handle.get_tensor(name)) for name in handle.keys()}
    sizes = {entry.vector.shape for entry in entries.values()}
    if len(sizes) > 1 or any(len(size) != 1 for size in sizes):
        raise ValueError(f"vectors of different shapes {sorted(sizes)}")
    for name, entry in entries.items():
        if entry.vector.dtype != np.float32 or not np.all(np.isfinite(entry.vector)):
            raise ValueError(f"vector of '{name}' is not finite float32")
        if abs(float(np.linalg.norm(entry.vector)) - 1.0) > 1e-3:
            raise ValueError(f"vector of '{name}' is not unit length")
    return entries


def write_entries(path: Path, setup: dict, entries: dict[str, CachedClass]) -> None:
    """Replace ``path`` atomically with ``entries``, the setup recorded in the metadata; warn if it cannot."""
    from safetensors.numpy import save_file

    metadata = {
        "format": FORMAT,
        "setup": json.dumps(setup, sort_keys=True, ensure_ascii=False),
        "texts_sha256": json.dumps({name: entry.texts_sha256 for name, entry in entries.items()}, ensure_ascii=False),
    }
    tensors = {name: np.ascontiguousarray(entry.vector, dtype=np.float32) for name, entry in entries.items()}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except OSError as error:  # a read-only or full disk costs the next run time, not this run's result
        log.warning("cannot write text embedding cache %s (%s): the next run will encode again", path, error)
