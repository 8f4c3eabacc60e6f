"""``maps.parquet``: the raw heat maps ``chexfusion explain`` writes, readable with pyarrow, pandas or DuckDB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path

SCHEMA = pa.schema([("dicom_id", pa.string()), ("study_id", pa.string()), ("class", pa.string()),
                    ("method", pa.string()), ("probability", pa.float32()), ("size", pa.int32()),
                    ("map", pa.list_(pa.float32()))])


def write_maps(path: Path, records: list[tuple]) -> None:
    """``records``: (dicom_id, study_id, class, method, probability, map [S, S]) tuples."""
    columns = list(zip(*records)) if records else [[] for _ in range(6)]
    maps = [np.asarray(m, dtype=np.float32) for m in columns[5]]
    table = pa.table({"dicom_id": list(columns[0]), "study_id": list(columns[1]), "class": list(columns[2]),
                      "method": list(columns[3]), "probability": list(columns[4]),
                      "size": [int(m.shape[0]) for m in maps], "map": [m.ravel() for m in maps]}, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_maps(path: Path) -> list[dict]:
    """The rows back, each ``map`` as a float32 ``[size, size]`` array."""
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["map"] = np.asarray(row["map"], dtype=np.float32).reshape(row["size"], row["size"])
    return rows
