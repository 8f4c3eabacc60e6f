"""The Parquet layout of a shard: columns, Arrow types, write options, and the NumPy <-> Arrow conversions.

One row per image: ``dicom_id``, ``study_id``, ``subject_id``, ``view``,
``split`` (strings), ``csv_row`` (int32, the row in the split's CSV) and
``features``, the map flattened row-major over ``(C, h, w)``.

The features column comes in two layouts (``features.layout``):

- ``binary`` (default): ``fixed_size_binary[C*h*w*itemsize]``, the little-endian
  values of one map per cell. Parquet stores it as one fixed-length value per
  row, so a row group decodes with one ``memcpy`` and NumPy views the result
  without copying. Any Parquet reader opens it; the values are
  ``np.frombuffer(cell, "<f2").reshape(C, h, w)`` (dtype and shape are also in
  the field metadata and ``manifest.json``).
- ``list``: ``fixed_size_list<float16|float32>[C*h*w]``, typed for tools that
  want floats (DuckDB, Spark), at ~8x the read time: Parquet keeps a
  repetition and a definition level per value (``benchmarks/feature_store.py``).

Write options are chosen for speed, not PyArrow's defaults: no dictionary and no
statistics on the features (both cost a pass over every value for nothing), no
compression (float16 maps have high-entropy mantissas: measured, zstd saves 8%
at 3x the write and 2.7x the read time, lz4 saves nothing); dictionaries only on
the two low-cardinality strings. Nothing time-dependent is written, so the same
rows give the same bytes. Row groups hold whole studies (:func:`study_runs`).

Reading without chexfusion: the folder also holds ``manifest.json``, so name the
shards, e.g. ``pd.read_parquet(sorted(glob("features/demo/part-*.parquet")))``,
``SELECT * FROM 'features/demo/part-*.parquet'`` in DuckDB, or
``pyarrow.dataset.dataset("features/demo", format="parquet", exclude_invalid_files=True)``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

META_COLUMNS = ("dicom_id", "study_id", "subject_id", "view", "split", "csv_row")
FEATURES = "features"
NUMPY_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}

PARQUET_OPTIONS = dict(
    compression="none",
    use_dictionary=["view", "split"],
    write_statistics=["dicom_id", "study_id", "subject_id", "csv_row"],  # small columns, for filter push-down
    store_schema=True,
)


def features_type(dtype: str, layout: str, width: int) -> pa.DataType:
    if layout == "binary":
        return pa.binary(width * NUMPY_DTYPES[dtype].itemsize)
    return pa.list_(pa.field("element", ARROW_DTYPES[dtype], nullable=False), width)


def shard_schema(dtype: str, layout: str, shape: tuple[int, int, int]) -> pa.Schema:
    width = int(np.prod(shape))
    described = {"dtype": dtype, "shape": json.dumps(list(shape)), "order": "row-major (C, h, w)",
                 "byte_order": "little-endian"}
    return pa.schema([
        pa.field("dicom_id", pa.string(), nullable=False),
        pa.field("study_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("view", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("csv_row", pa.int32(), nullable=False),
        pa.field(FEATURES, features_type(dtype, layout, width), nullable=False, metadata=described),
    ])


def features_to_arrow(values: np.ndarray, dtype: str, layout: str) -> pa.Array:
    """``[n, D]`` array -> the Arrow features column (no copy when ``values`` already has the store dtype)."""
    values = np.ascontiguousarray(values, dtype=NUMPY_DTYPES[dtype])
    n, width = values.shape
    if layout == "binary":
        return pa.FixedSizeBinaryArray.from_buffers(features_type(dtype, layout, width), n,
                                                    [None, pa.py_buffer(values)])
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=ARROW_DTYPES[dtype]),
                                             type=features_type(dtype, layout, width))


def features_to_numpy(chunk: pa.Array, dtype: str, width: int) -> np.ndarray:
    """One Arrow chunk of the features column -> read-only ``[n, D]`` view of its buffer (no copy)."""
    np_dtype = NUMPY_DTYPES[dtype]
    n = len(chunk)
    if pa.types.is_fixed_size_binary(chunk.type):
        buffer = chunk.buffers()[1]
        return np.frombuffer(buffer, dtype=np_dtype, count=n * width,
                             offset=chunk.offset * width * np_dtype.itemsize).reshape(n, width)
    return chunk.flatten().to_numpy(zero_copy_only=True).view(np_dtype).reshape(n, width)


def shard_table(columns: dict[str, np.ndarray | list], features: np.ndarray, dtype: str, layout: str,
                shape: tuple[int, int, int]) -> pa.Table:
    """The Arrow table of one shard: metadata columns (by name) plus the ``[n, D]`` features."""
    schema = shard_schema(dtype, layout, shape)
    arrays = [pa.array(columns[name], type=schema.field(name).type) for name in META_COLUMNS]
    arrays.append(features_to_arrow(features, dtype, layout))
    return pa.Table.from_arrays(arrays, schema=schema)


def study_runs(study_ids, max_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of at most ``max_rows`` rows that never split a run of equal study ids.

    Studies are packed in order while they fit; a study larger than ``max_rows``
    gets a range of its own. Row groups and shards are cut this way, so a
    reader that owns a row group owns its studies whole (stage 2's sharded
    stream reads nothing of another reader's row groups).
    """
    ids = np.asarray(study_ids, dtype=object)
    if not len(ids):
        return []
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]).tolist() + [len(ids)]
    runs, start = [], 0
    for study_start, study_stop in pairwise(starts):
        if study_stop - start > max_rows and study_start > start:
            runs.append((start, study_start))
            start = study_start
    return runs + [(start, len(ids))]


def write_parquet(table: pa.Table, sink, row_group_rows: int, record=None) -> list:
    """Write ``table`` to ``sink`` (a path or a writable file object) in row groups of whole studies.

    ``record``, if given, is called with each row group's rows while they are written, on a worker thread (the
    writer hashes them there: ``checksums.row_group_record``; the Parquet encoder and xxhash both release the
    GIL, so the hash costs a second core, not time); its results are returned in row-group order.
    """
    records = []
    runs = study_runs(table.column("study_id").to_numpy(zero_copy_only=False), row_group_rows) or [(0, 0)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chexfusion-hash") as pool, \
            pq.ParquetWriter(sink, table.schema, **PARQUET_OPTIONS) as writer:
        for start, stop in runs:
            part = table.slice(start, stop - start)
            recording = pool.submit(record, part) if record is not None else None
            writer.write_table(part, row_group_size=max(stop - start, 1))
            if recording is not None:
                records.append(recording.result())
    return records
