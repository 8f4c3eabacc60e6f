"""``manifest.json``: what a feature store was made from, and the one test of whether it is stale.

The writer and stage 2 build the same *expected* description from the config
(:func:`expected_from_config`: backbone weights hashes from the stage-1 run
folders' ``run.json`` or from a frozen encoder's weight files (``sources.py``),
routing, preprocessing, pool, dtype, CSV hashes); the manifest is a superset
of it. :func:`first_difference` compares the two and names what differs, so a
store made from another checkpoint, encoder, image size or CSV is refused with
one line instead of silently feeding stage 2 the wrong maps. Paths are
recorded but not compared: moving a run folder or the data does not make a
store stale, changing their content does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import xxhash

from ..data.views import VIEWS
from ..errors import UserError
from ..io import atomic_write_json, file_digest, file_sha256
from . import checksums
from .config import FeatureConfig
from .routing import route_view  # the one routing rule, shared with predict
from .sources import backbone_entry, describe_source

FORMAT = "chexfusion-feature-store"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Keys that change what the features *are*; stage 2 checks these.
CONTENT_KEYS = ("routing", "unknown_view", "backbones", "preprocess", "image_size", "feature_shape", "pool",
                "dtype", "shape", "splits")
# Keys that change only how the same features are laid out in files; the writer rebuilds when they change.
# study_aligned: row groups and shards hold whole studies (stage 2's sharded stream needs it); row_group_checksums:
# each shard entry lists its row groups' checksums (a streamed read needs them, checksums.py). Stores written
# before either are rewritten by chexfusion features.
STORAGE_KEYS = ("format_version", "layout", "shard_rows", "row_group_checksums", "row_group_rows", "study_aligned")


# A shard's checksum finds a damaged, truncated or swapped shard file (resume and ``features --verify``); it is not
# a defence against tampering, so it is XXH3, not sha256: hashing runs at memory speed (measured ~10x sha256 here).
# Stores written now record checksums.ALGORITHM (their row groups' values); older ones the hash of the whole file
# with one of DIGESTS, still checked that way.
DIGESTS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


def shard_file_name(split: str, index: int) -> str:
    return f"part-{split}-{index:05d}.parquet"


def file_checksum(path: Path, algorithm: str) -> str:
    """``'<algorithm>:<hex digest>'`` of a shard file's bytes (the checksum of stores written before
    ``checksums.ALGORITHM``)."""
    return f"{algorithm}:{file_digest(path, DIGESTS[algorithm]())}"


def bytes_checksum(data, algorithm: str) -> str:
    """``'<algorithm>:<hex digest>'`` of a shard's bytes in memory, as :func:`file_checksum` gives for its file."""
    return f"{algorithm}:{DIGESTS[algorithm](data).hexdigest()}"


def recorded_checksum(record: dict) -> str | None:
    """The ``'<algorithm>:<hex>'`` checksum of a manifest shard entry or sidecar, or None.

    Stores written before checksums were XXH3 recorded ``sha256``; it is read as ``'sha256:<hex>'``, so those
    stores still verify, resume and finish as they are.
    """
    if record.get("checksum"):
        return str(record["checksum"])
    return f"sha256:{record['sha256']}" if record.get("sha256") else None


def shard_matches(path: Path, record: dict) -> bool:
    """Whether the file at ``path`` has the checksums that its manifest entry or sidecar ``record`` holds
    (reads the whole file; a file that does not decode does not match)."""
    recorded = recorded_checksum(record)
    algorithm = recorded.partition(":")[0] if recorded else None
    if algorithm == checksums.ALGORITHM:
        try:
            found = checksums.file_records(path)
        except (OSError, pa.ArrowInvalid):
            return False
        return found == record.get("row_groups") and checksums.shard_checksum(found) == recorded
    return algorithm in DIGESTS and file_checksum(path, algorithm) == recorded


def pooled_shape(feature_shape, pool) -> list[int]:
    channels = int(feature_shape[0])
    return [channels, int(pool[0]), int(pool[1])] if pool else [int(d) for d in feature_shape]




def _split_entry(name: str, csv: str, image_root: str) -> dict:
    if not Path(csv).is_file():
        raise UserError(f"CSV file not found: {csv} (split '{name}')")
    return {"csv": str(csv), "csv_sha256": file_sha256(Path(csv)), "image_root": str(image_root)}


def expected_from_config(cfg: FeatureConfig, splits: dict[str, tuple[str, str]]) -> dict:
    """What a store made now from ``cfg`` and ``splits`` (name -> (CSV, image root)) must record.

    All backbones must share preprocessing and feature shape: stage 2 puts the
    maps of all views of a study side by side.
    """
    cfg.validate()
    entries = {slot: backbone_entry(slot, value, cfg.routing) for slot, value in cfg.backbone_slots().items()}
    first_slot, first = next(iter(entries.items()))
    for slot, entry in entries.items():
        for key in ("preprocess", "feature_shape"):
            if entry[key] != first[key]:
                raise UserError(f"{describe_source(first)} ({first_slot}) and {describe_source(entry)} ({slot}) "
                                f"have different {key} ({first[key]} vs {entry[key]}): per-view backbones must "
                                f"share it")
    unknown_view = cfg.unknown_view if cfg.routing == "per_view" else None
    return {
        "routing": cfg.routing,
        "unknown_view": unknown_view,
        "view_routing": {view: route_view(view, cfg.routing, cfg.unknown_view) for view in VIEWS},
        "backbones": {slot: {k: e[k] for k in ("run", "encoder", "weights_sha256", "backbone", "trained_on_views")
                             if k in e} for slot, e in entries.items()},
        "preprocess": first["preprocess"],
        "image_size": int(first["preprocess"]["image_size"]),
        "feature_shape": first["feature_shape"],
        "pool": list(cfg.pool) if cfg.pool else None,
        "shape": pooled_shape(first["feature_shape"], cfg.pool),
        "dtype": cfg.dtype,
        "splits": {name: _split_entry(name, csv, root) for name, (csv, root) in splits.items()},
    }


def new_manifest(expected: dict, cfg: FeatureConfig) -> dict:
    """The manifest of a store being written (``complete`` false until every shard is on disk)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False, **expected,
            "layout": cfg.layout, "shard_rows": cfg.shard_rows, "row_group_rows": cfg.row_group_rows,
            "study_aligned": True, "row_group_checksums": True}


def read_manifest(store: Path) -> dict | None:
    path = Path(store) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON: delete the folder {store} and run chexfusion features") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a chexfusion feature store manifest")
    return manifest


def write_manifest(store: Path, manifest: dict) -> None:
    atomic_write_json(Path(store) / MANIFEST_NAME, manifest)


# ---- comparison ------------------------------------------------------------------------------------------


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256
        return value[:12] + "…"
    return json.dumps(value) if not isinstance(value, str) else value


def _leaf_difference(key: str, have, want) -> tuple[str, object, object] | None:
    """The first differing leaf under ``key`` as (dotted key, stored, expected)."""
    if isinstance(have, dict) and isinstance(want, dict):
        for sub in list(want) + [k for k in have if k not in want]:
            found = _leaf_difference(f"{key}.{sub}", have.get(sub), want.get(sub))
            if found:
                return found
        return None
    return None if have == want else (key, have, want)


def _backbone_difference(stored: dict, expected: dict) -> str | None:
    for slot, want in expected["backbones"].items():
        have = stored.get("backbones", {}).get(slot)
        if have is None:
            return f"it has no {slot} backbone, the config routes images through one"
        if have.get("weights_sha256") != want["weights_sha256"]:
            return (f"backbone {slot} was made from weights {_short(have.get('weights_sha256'))}, "
                    f"the {describe_source(want)} now has {_short(want['weights_sha256'])}")
        if have.get("backbone") != want["backbone"]:
            return (f"backbone {slot} is {have.get('backbone')} in the store, {want['backbone']} in the "
                    f"{describe_source(want)}")
    return None


def _split_difference(stored: dict, expected: dict) -> str | None:
    for name, want in expected["splits"].items():
        have = stored.get("splits", {}).get(name)
        if have is None:
            return f"it has no '{name}' split (from {want['csv']})"
        if have.get("csv_sha256") != want["csv_sha256"]:
            return (f"split '{name}' was made from another version of {want['csv']} "
                    f"(sha256 {_short(have.get('csv_sha256'))}, now {_short(want['csv_sha256'])})")
    return None


def first_difference(stored: dict, expected: dict, keys=CONTENT_KEYS) -> str | None:
    """One phrase naming the first way ``stored`` differs from ``expected`` on ``keys``, or None."""
    for key in keys:
        if key == "backbones":
            found = _backbone_difference(stored, expected)
        elif key == "splits":
            found = _split_difference(stored, expected)
        else:
            leaf = _leaf_difference(key, stored.get(key), expected.get(key))
            found = leaf and f"{leaf[0]} is {_short(leaf[1])} in the store, {_short(leaf[2])} in the config"
        if found:
            return found
    return None
