"""Checksums of a shard's row groups, computed from the Arrow buffers as each row group is written and as it is read.

A shard's manifest entry lists, for each row group, its row count and two
XXH3-64 digests: ``meta`` over the metadata columns (what a streamed split
loads up front) and ``maps`` over the feature maps (what a streamed read
decodes one row group at a time). Both hash the *values*, not the file's
bytes: the writer hashes the buffers it hands to the Parquet writer (no second
read of the file), and a reader hashes what it decoded, in the same pass, so
every reader -- in memory or streamed, a whole shard or one row group -- checks
exactly what it uses. A damaged page either fails to decode (refused as
unreadable) or decodes to other values (refused by the digest); a damaged
footer fails to open. The shard's own checksum is the XXH3-128 of its
row-group list, so resume and ``features --verify`` compare one string.

Values are hashed independently of how Arrow chunks them (strings as their
lengths, then their bytes), so a row group read as one chunk or several, or
sliced out of a whole shard, gives the same digest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from .schema import FEATURES, META_COLUMNS

ALGORITHM = "xxh3_128-row-groups"  # the shard checksum's tag: '<ALGORITHM>:<hex>'


def _chunks(column) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def _fixed_width_bytes(chunk: pa.Array) -> memoryview:
    """The value bytes of a chunk of a fixed-width column (ints, fixed_size_binary, fixed_size_list of those)."""
    if pa.types.is_fixed_size_list(chunk.type):
        return _fixed_width_bytes(chunk.flatten())
    width = chunk.type.byte_width
    if not len(chunk):
        return memoryview(b"")
    return memoryview(chunk.buffers()[1])[chunk.offset * width:(chunk.offset + len(chunk)) * width]


def _string_offsets(chunk: pa.Array) -> np.ndarray:
    return np.frombuffer(chunk.buffers()[1], np.int32, count=len(chunk) + 1, offset=chunk.offset * 4)


def update_with_column(digest, column) -> None:
    """Feed a column's values to ``digest``: strings as their lengths then their bytes, others as their bytes."""
    chunks = [c for c in _chunks(column) if len(c)]
    if not pa.types.is_string(column.type):
        for chunk in chunks:
            digest.update(_fixed_width_bytes(chunk))
        return
    for chunk in chunks:
        digest.update(np.diff(_string_offsets(chunk)).astype("<i4"))
    for chunk in chunks:
        offsets = _string_offsets(chunk)
        if offsets[-1] > offsets[0]:
            digest.update(memoryview(chunk.buffers()[2])[offsets[0]:offsets[-1]])


def meta_digest(table: pa.Table) -> str:
    """Digest of the metadata columns of one row group's rows."""
    digest = xxhash.xxh3_64()
    for name in META_COLUMNS:
        update_with_column(digest, table.column(name))
    return digest.hexdigest()


def maps_digest(column) -> str:
    """Digest of the feature maps of one row group's rows (the ``features`` column)."""
    digest = xxhash.xxh3_64()
    update_with_column(digest, column)
    return digest.hexdigest()


def row_group_record(table: pa.Table) -> dict:
    """What the manifest records for a row group holding the rows of ``table``."""
    return {"rows": table.num_rows, "meta": meta_digest(table), "maps": maps_digest(table.column(FEATURES))}


def shard_checksum(records: list[dict]) -> str:
    """``'<ALGORITHM>:<hex>'``: the XXH3-128 of a shard's row-group records."""
    text = json.dumps([[r["rows"], r["meta"], r["maps"]] for r in records])
    return f"{ALGORITHM}:{xxhash.xxh3_128_hexdigest(text.encode())}"


def file_records(path: Path) -> list[dict]:
    """The row-group records of the shard file at ``path``, from its decoded values (reads the whole file)."""
    parquet = pq.ParquetFile(path, memory_map=True, pre_buffer=False)
    return [row_group_record(parquet.read_row_group(g, columns=[*META_COLUMNS, FEATURES], use_threads=False))
            for g in range(parquet.metadata.num_row_groups)]
