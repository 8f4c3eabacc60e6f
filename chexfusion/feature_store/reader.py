"""Reading a feature store for stage 2: a whole split in memory, or whole studies streamed row group by row group.

In memory (:meth:`FeatureStore.load_split`): each Parquet row group decodes
into one Arrow buffer that NumPy views without copying, so loading costs one
pass over the bytes and holds the split once. :class:`SplitFeatures` serves
studies and row ranges from those chunks; its ``features`` property gives one
contiguous ``[N, C*h*w]`` array, which costs a second copy of the split (and
twice its memory for a moment) unless the split is a single chunk.

Streaming (:meth:`FeatureStore.iter_studies`), for stores larger than memory:
only the metadata columns of the split are loaded (:meth:`FeatureStore.split_metadata`,
which also tells a reader up front which studies and labels to expect); the maps
are read one row group at a time. A row group *owns* the studies that start in it; a study that
runs past its end takes its remaining rows from the next row group (studies
are contiguous in store order). At most two row groups are decoded at a time
(the one in use and the next, decoded while the one in use is checked), plus a
shuffle buffer of whole studies, so memory does not grow with the store.

Every read checks what it decoded against the row-group checksums in the
manifest, in the same pass (``integrity.py``), a row group's check overlapping
the decode of the next (``read_ahead.py``); ``FeatureStore(path, verify=False)``
skips that (benchmarks/feature_store.py measures what it costs).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from ..data.views import VIEWS
from ..errors import UserError
from ..io import atomic_path
from . import integrity
from . import manifest as mf
from .read_ahead import checked_in_turn
from .schema import FEATURES, NUMPY_DTYPES, features_to_numpy

READ_META = ("dicom_id", "study_id", "subject_id", "view", "csv_row")
MAPPED_DIR = "_mapped"  # map_split's Arrow IPC copies of splits (derived from the shards; safe to delete)


@dataclass
class StudyFeatures:
    """All images of one study, in canonical order (frontal, lateral, unknown)."""

    study_id: str
    features: np.ndarray  # [n, C, h, w] in the store dtype (read-only when it is a view of the store's buffers)
    views: np.ndarray  # [n] int64 indices into chexfusion.data.views.VIEWS
    dicom_ids: list[str]
    csv_rows: np.ndarray  # [n] int64 rows of the split's CSV (for labels)
    index: int = -1  # the study's position in the split's store order (its row in SplitMetadata / SplitFeatures)


def _arrow_strings(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())


def view_indices(views) -> np.ndarray:
    """View names -> int64 indices into VIEWS (vectorised in Arrow: a 377k-row split takes milliseconds)."""
    views = _arrow_strings(views)
    found = pc.index_in(views, value_set=pa.array(VIEWS))
    if found.null_count:
        bad = views[int(np.flatnonzero(found.is_null().to_numpy(zero_copy_only=False))[0])].as_py()
        raise UserError(f"feature store row has view '{bad}', not one of {', '.join(VIEWS)}")
    return found.to_numpy().astype(np.int64)


def study_bounds(study_ids) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop row of each run of equal study ids (the store keeps a study's rows together)."""
    ids = _arrow_strings(study_ids)
    if len(ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    changed = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, changed])
    return starts, np.r_[starts[1:], len(ids)]


@dataclass
class SplitFeatures:
    """A split in memory: per-image metadata, the maps (as zero-copy chunks), and a study index."""

    split: str
    meta: pd.DataFrame  # dicom_id, study_id, subject_id, view, csv_row; one row per image in store order
    shape: tuple[int, int, int]
    dtype: np.dtype
    chunks: list[np.ndarray]  # [n_i, C*h*w] read-only views of the Arrow buffers, covering the rows in order
    chunk_starts: np.ndarray = field(init=False)
    views: np.ndarray = field(init=False)  # [N] int64 view indices
    study_ids: np.ndarray = field(init=False)  # [S] in store order
    study_starts: np.ndarray = field(init=False)
    study_stops: np.ndarray = field(init=False)

    def __post_init__(self):
        sizes = [len(c) for c in self.chunks]
        self.chunk_starts = np.cumsum([0] + sizes)[:-1].astype(np.int64)
        self.views = view_indices(self.meta["view"])
        self.study_starts, self.study_stops = study_bounds(self.meta["study_id"])
        self.study_ids = self.meta["study_id"].to_numpy(dtype=object)[self.study_starts]

    def __len__(self) -> int:
        """Number of studies."""
        return len(self.study_starts)

    @property
    def num_images(self) -> int:
        return len(self.meta)

    @cached_property
    def csv_rows(self) -> np.ndarray:
        """[N] int64 rows of the split's CSV (as :attr:`SplitMetadata.csv_rows`)."""
        return self.meta["csv_row"].to_numpy(dtype=np.int64)

    @cached_property
    def study_index(self) -> dict[str, slice]:
        return {s: slice(int(a), int(b)) for s, a, b in zip(self.study_ids, self.study_starts, self.study_stops)}

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Maps ``[stop-start, C*h*w]`` of a row range: a view when the range lies in one chunk, else a copy."""
        if stop <= start:
            return np.zeros((0, int(np.prod(self.shape))), self.dtype)
        first = int(np.searchsorted(self.chunk_starts, start, side="right")) - 1
        last = int(np.searchsorted(self.chunk_starts, stop - 1, side="right")) - 1
        if first == last:
            base = self.chunk_starts[first]
            return self.chunks[first][start - base:stop - base]
        return np.concatenate([self.rows(max(start, int(self.chunk_starts[k])),
                                         min(stop, int(self.chunk_starts[k]) + len(self.chunks[k])))
                               for k in range(first, last + 1)])

    def take(self, indices) -> np.ndarray:
        """Maps of arbitrary rows (a copy), e.g. all frontal images."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), int(np.prod(self.shape))), self.dtype)
        owner = np.searchsorted(self.chunk_starts, indices, side="right") - 1
        for k in np.unique(owner):
            sel = owner == k
            out[sel] = self.chunks[k][indices[sel] - self.chunk_starts[k]]
        return out

    @cached_property
    def features(self) -> np.ndarray:
        """All maps as one ``[N, C*h*w]`` array: free for a single chunk, else one copy (prefer rows/study)."""
        if len(self.chunks) == 1:
            return self.chunks[0]
        return self.rows(0, self.num_images)

    def study(self, i: int) -> StudyFeatures:
        start, stop = int(self.study_starts[i]), int(self.study_stops[i])
        return StudyFeatures(
            study_id=str(self.study_ids[i]),
            features=self.rows(start, stop).reshape(stop - start, *self.shape),
            views=self.views[start:stop],
            dicom_ids=self.meta["dicom_id"].iloc[start:stop].tolist(),
            csv_rows=self.csv_rows[start:stop],
            index=i,
        )


@dataclass
class SplitMetadata:
    """A split without its maps: per-image metadata in store order, and where each study starts and stops.

    What a streamed split knows before any map is read (~100 bytes an image), so a
    reader of :meth:`FeatureStore.iter_studies` can label every study and image up
    front. Study ``i`` is study ``i`` of :meth:`FeatureStore.load_split` and the
    ``index`` of the :class:`StudyFeatures` that ``iter_studies`` yields for it.
    """

    split: str
    views: np.ndarray  # [N] int64 view indices
    csv_rows: np.ndarray  # [N] int64 rows of the split's CSV
    dicom_ids: pa.Array  # [N] strings
    study_ids: np.ndarray  # [S] in store order
    study_starts: np.ndarray  # [S] first row of each study
    study_stops: np.ndarray  # [S] one past its last row

    def __len__(self) -> int:
        """Number of studies."""
        return len(self.study_starts)

    @property
    def num_images(self) -> int:
        return len(self.views)


@dataclass
class StreamStats:
    """What the last :meth:`FeatureStore.iter_studies` held at most at once (for tests and tuning)."""

    row_group_reads: int = 0
    max_decoded_row_groups: int = 0
    max_decoded_rows: int = 0
    max_buffered_studies: int = 0


class _RowGroupCache:
    """The decoded maps of at most ``capacity`` row groups, least recently used evicted first.

    ``get`` takes the reader at each call rather than keeping it: a bound method
    of the stream held here would be a reference cycle, and a finished stream
    (one per epoch in stage 2) would keep its row groups until the garbage
    collector happened to run.
    """

    def __init__(self, capacity: int, stats: StreamStats):
        self.capacity, self.stats = capacity, stats
        self.items: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, g: int, read) -> np.ndarray:
        if g in self.items:
            self.items.move_to_end(g)
            return self.items[g]
        self.make_room()  # before the read: never capacity + 1 row groups at once
        return self.put(g, read(g))

    def make_room(self) -> None:
        """Evict the least recently used row groups until one more fits."""
        while len(self.items) >= self.capacity:
            self.items.popitem(last=False)

    def put(self, g: int, maps: np.ndarray, ahead_rows: int | None = None) -> np.ndarray:
        """Hold ``maps``, the decoded row group ``g``; ``ahead_rows``: the rows of the next one, decoded while
        ``g`` was checked and held by the reader meanwhile (counted in the stats)."""
        self.make_room()
        self.items[g] = maps
        sizes = [len(a) for a in self.items.values()] + ([] if ahead_rows is None else [ahead_rows])
        self.stats.row_group_reads += 1
        self.stats.max_decoded_row_groups = max(self.stats.max_decoded_row_groups, len(sizes))
        self.stats.max_decoded_rows = max(self.stats.max_decoded_rows, sum(sizes))
        return maps


class FeatureStore:
    """A complete feature store folder, opened by its ``manifest.json``."""

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path, self.verify_reads = Path(path), verify
        manifest = mf.read_manifest(self.path)
        if manifest is None:
            raise UserError(f"no feature store at {self.path} (no {mf.MANIFEST_NAME}): run chexfusion features")
        if not manifest.get("complete"):
            raise UserError(f"feature store {self.path} is incomplete (interrupted?): run chexfusion features "
                            "again to finish it")
        if manifest.get("format_version") != mf.FORMAT_VERSION:
            raise UserError(f"feature store {self.path} has format version {manifest.get('format_version')}, this "
                            f"chexfusion reads version {mf.FORMAT_VERSION}: run chexfusion features to rebuild it")
        self.manifest = manifest
        self.shape: tuple[int, int, int] = tuple(int(d) for d in manifest["shape"])
        self.dtype = NUMPY_DTYPES[manifest["dtype"]]
        self.width = int(np.prod(self.shape))
        self.last_stream_stats = StreamStats()
        self.entries = integrity.listed_shards(manifest)
        problems = integrity.listing_problems(self.path, manifest)  # footers only: a few KB a shard
        if problems:
            raise integrity.refusal(self.path, *problems[0])

    # ---- the manifest ------------------------------------------------------------------------------------

    @staticmethod
    def expected_from_config(features_cfg, splits: dict[str, tuple[str, str]]) -> dict:
        """What a current store must record (see ``manifest.expected_from_config``), for :meth:`check_matches`."""
        return mf.expected_from_config(features_cfg, splits)

    def check_matches(self, expected: dict) -> None:
        """UserError naming the first difference when the store was not made from ``expected``."""
        why = mf.first_difference(self.manifest, expected)
        if why:
            raise UserError(f"feature store {self.path} is stale: {why} (re-run chexfusion features)")

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def _split(self, split: str) -> dict:
        if split not in self.manifest["splits"]:
            raise UserError(f"feature store {self.path} has no split '{split}' (it has: {', '.join(self.splits)})")
        return self.manifest["splits"][split]

    def split_rows(self, split: str) -> int:
        return int(self._split(split)["rows"])

    def split_nbytes(self, split: str) -> int:
        """Bytes of the split's maps in memory."""
        return self.split_rows(split) * self.width * self.dtype.itemsize

    def fits_in_memory(self, split: str, max_memory_gb: float) -> bool:
        """Whether :meth:`load_split` stays under ``max_memory_gb`` (else use :meth:`iter_studies`)."""
        return self.split_nbytes(split) <= max_memory_gb * 1e9

    def _shard_paths(self, split: str) -> list[Path]:
        return [self.path / s["file"] for s in self._split(split)["shards"]]

    def _records(self, path: Path, streamed: bool) -> list[dict] | None:
        """The row-group checksums of shard ``path`` when reads are verified; None for an older store read into
        memory (checked otherwise there, see :meth:`map_split`); refused for an older store streamed."""
        if not self.verify_reads:
            return None
        records = self.entries[path.name].get("row_groups")
        if records is None and streamed:
            raise integrity.old_store_refusal(self.path)
        return records

    def verify(self) -> None:
        """Check every shard against the checksum in the manifest (reads the whole store)."""
        problems = integrity.checksum_problems(self.path, self.manifest)
        if problems:
            raise integrity.refusal(self.path, *problems[0])

    # ---- in memory -----------------------------------------------------------------------------------------

    def _open(self, path: Path, memory_map: bool) -> pq.ParquetFile:
        # pre_buffer off: it would copy every column chunk into memory before decoding it. Parquet's page CRCs
        # are not used: verifying them measured 3-4x slower reads than not (integrity.py checks bytes otherwise).
        with integrity.reading(self.path, path):
            return pq.ParquetFile(path, memory_map=memory_map, pre_buffer=False)

    def _read_shard_table(self, path: Path, split: str) -> pa.Table:
        """A whole shard's metadata and maps (``split`` dropped), each row group checked against its checksums
        while the next is decoded (``read_ahead.py``)."""
        records = self._records(path, streamed=False)
        parquet = self._open(path, memory_map=True)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
        if records is not None and sizes != [int(r["rows"]) for r in records]:
            with integrity.reading(self.path, path):  # the clearer line first, for a shard of another split
                integrity.check_split_column(self.path, path, parquet.read(columns=["split"]), split)
            integrity.check_row_group_layout(self.path, path, sizes, records)

        def decode(g: int) -> pa.Table:
            with integrity.reading(self.path, path):
                return parquet.read_row_group(g, columns=[*READ_META, "split", FEATURES], use_threads=False)

        def check(g: int, part: pa.Table) -> None:
            integrity.check_split_column(self.path, path, part, split)  # first: the clearer line for a misplaced shard
            integrity.check_row_group(self.path, path, g, part, records)

        parts = [part for _, part in checked_in_turn(range(len(sizes)), decode,
                                                     None if records is None else check)]
        table = pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table()
        if records is None:
            integrity.check_split_column(self.path, path, table, split)
        return table.select([*READ_META, FEATURES])

    def _read_shard(self, path: Path, split: str) -> tuple[pa.Table, list[np.ndarray]]:
        table = self._read_shard_table(path, split)
        chunks = [features_to_numpy(c, self.manifest["dtype"], self.width) for c in table.column(FEATURES).chunks]
        return table.drop_columns([FEATURES]), chunks

    def load_split(self, split: str) -> SplitFeatures:
        """The whole split in memory (see :meth:`fits_in_memory`), decoded from its Parquet shards.

        Shards are read one after the other: decoding is a memory-bound copy, and
        parallel threads measured slower here (they contend for the page tables).
        The decoded maps are private to the process; :meth:`map_split` shares them.
        """
        parts = [self._read_shard(path, split) for path in self._shard_paths(split)]
        return self._split_features(split, [t for t, _ in parts], [c for _, cs in parts for c in cs])

    def _split_features(self, split: str, metas: list[pa.Table], chunks: list[np.ndarray]) -> SplitFeatures:
        if metas:
            meta = pa.concat_tables(metas).to_pandas()
        else:
            meta = pd.DataFrame({c: pd.Series([], dtype="int32" if c == "csv_row" else "str") for c in READ_META})
        return SplitFeatures(split, meta, self.shape, self.dtype, [c for c in chunks if len(c)])

    def mapped_path(self, split: str) -> Path:
        """Where :meth:`map_split` keeps the split's uncompressed copy: named by its shards' checksums, so a
        rewritten shard gives another file."""
        checksums = "".join(str(mf.recorded_checksum(s)) for s in self._split(split)["shards"])
        return self.path / MAPPED_DIR / f"{split}-{xxhash.xxh3_64_hexdigest(checksums.encode())}.arrow"

    def map_split(self, split: str) -> SplitFeatures:
        """The whole split as :meth:`load_split` gives it, its maps memory-mapped from an Arrow IPC file.

        Each shard is checked against its row-group checksums as it is read to
        write that file (an older store's, against its whole-file checksum:
        the bytes are hashed in memory, then decoded).

        Parquet pages always decode into the reading process's own memory, so P
        processes that load a split hold P copies. An Arrow IPC file is the
        in-memory layout itself: mapped, its buffers are the page cache's, and
        every process on the machine that maps it shares one copy. The file is
        written once (atomically, from the shards) and reused while the shards
        do not change; under several processes let one process write it first.
        """
        if not self.split_rows(split):
            return self.load_split(split)
        path = self.mapped_path(split)
        if not path.is_file():
            self._write_mapped(split, path)
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        chunks = [features_to_numpy(c, self.manifest["dtype"], self.width) for c in table.column(FEATURES).chunks]
        return self._split_features(split, [table.drop_columns([FEATURES])], chunks)

    def _write_mapped(self, split: str, path: Path) -> None:
        for stale in path.parent.glob(f"{split}-*.arrow"):
            stale.unlink(missing_ok=True)
        rows = int(self.manifest.get("row_group_rows", 256))  # a batch of rows at a time, not the whole shard
        with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
            writer = None
            for shard in self._shard_paths(split):
                if self.entries[shard.name].get("row_groups") is not None or not self.verify_reads:
                    batches = self._read_shard_table(shard, split).to_batches(max_chunksize=rows)
                else:
                    batches = self._read_old_shard(shard, split, rows)
                for batch in batches:
                    writer = writer or pa.ipc.new_file(sink, batch.schema)
                    writer.write_batch(batch)
            writer.close()

    def _read_old_shard(self, path: Path, split: str, rows: int) -> list[pa.RecordBatch]:
        """A shard of a store written before row-group checksums, checked against its whole-file checksum."""
        with integrity.reading(self.path, path):
            parquet = pq.ParquetFile(pa.BufferReader(integrity.checked_bytes(self.path, path, self.entries)))
            batches = list(parquet.iter_batches(batch_size=rows, columns=[*READ_META, "split", FEATURES],
                                                use_threads=False))
        for batch in batches:
            integrity.check_split_column(self.path, path, batch, split)
        return [batch.drop_columns(["split"]) for batch in batches]

    # ---- streaming -----------------------------------------------------------------------------------------

    def split_metadata(self, split: str) -> SplitMetadata:
        """The split's metadata columns and study bounds, without its maps (see :class:`SplitMetadata`)."""
        tables = []
        for path in self._shard_paths(split):
            records = self._records(path, streamed=True)
            with integrity.reading(self.path, path):
                tables.append(self._open(path, memory_map=False).read(columns=[*READ_META, "split"]))
            integrity.check_split_column(self.path, path, tables[-1], split)
            if records is not None:
                integrity.check_meta(self.path, path, tables[-1], records)
        meta = pa.concat_tables(tables) if tables else None
        if meta is None or not meta.num_rows:
            empty = np.zeros(0, np.int64)
            return SplitMetadata(split, empty, empty, pa.array([], pa.string()), np.zeros(0, object), empty, empty)
        study_ids = meta.column("study_id").combine_chunks()
        starts, stops = study_bounds(study_ids)
        return SplitMetadata(split, views=view_indices(meta.column("view")),
                             csv_rows=meta.column("csv_row").to_numpy().astype(np.int64),
                             dicom_ids=meta.column("dicom_id").combine_chunks(),
                             study_ids=study_ids.take(pa.array(starts)).to_numpy(zero_copy_only=False).astype(object),
                             study_starts=starts, study_stops=stops)

    def row_groups(self, split: str) -> list[tuple[Path, int, int, int]]:
        """(shard path, row group index, first row, rows) of every row group of the split, in store order."""
        return self._row_groups(split)

    def read_row_group(self, path: Path, index: int) -> np.ndarray:
        """The maps ``[rows, C*h*w]`` of one row group (read-only views of the decoded buffer), checked against
        its checksum as they are decoded."""
        records = self._records(path, streamed=True)
        column = self._decode_maps(self._open(path, memory_map=False), path, index)
        if records is not None:
            integrity.check_maps(self.path, path, index, column, records)
        return self._maps(column)

    def read_row_groups(self, groups: list[tuple], order) -> Iterator[tuple[int, np.ndarray]]:
        """``(g, maps)`` for each ``g`` of ``order`` (indices into ``groups``, as :meth:`row_groups` lists them),
        each checked against its checksum; the check of one overlaps the decode of the next (``read_ahead.py``).
        At most two shards are open at a time."""
        paths = {groups[g][0] for g in order}
        records = {path: self._records(path, streamed=True) for path in paths}  # an older store refused up front
        files: OrderedDict[Path, pq.ParquetFile] = OrderedDict()

        def decode(g: int):
            path, index = groups[g][:2]
            if path not in files:
                if len(files) >= 2:
                    files.popitem(last=False)
                files[path] = self._open(path, memory_map=False)
            return self._decode_maps(files[path], path, index)

        def check(g: int, column) -> None:
            path, index = groups[g][:2]
            integrity.check_maps(self.path, path, index, column, records[path])

        for g, column in checked_in_turn(order, decode, check if self.verify_reads else None):
            yield g, self._maps(column)

    def _decode_maps(self, parquet: pq.ParquetFile, path: Path, index: int):
        """The ``features`` column of row group ``index`` of the open shard ``path``, unchecked."""
        with integrity.reading(self.path, path):
            return parquet.read_row_group(index, columns=[FEATURES]).column(FEATURES)

    def _maps(self, column) -> np.ndarray:
        chunks = [features_to_numpy(c, self.manifest["dtype"], self.width) for c in column.chunks]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _row_groups(self, split: str) -> list[tuple[Path, int, int, int]]:
        """(shard path, row group index, first row, rows) of every row group of the split, in store order; each
        shard's row groups must be those its checksums cover."""
        groups, start = [], 0
        for path in self._shard_paths(split):
            records = self._records(path, streamed=True)
            with integrity.reading(self.path, path):
                metadata = self._open(path, memory_map=False).metadata
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            if records is not None:
                integrity.check_row_group_layout(self.path, path, sizes, records)
            for g, n in enumerate(sizes):
                groups.append((path, g, start, n))
                start += n
        return groups

    def iter_studies(self, split: str, shuffle_buffer: int = 0, seed: int = 0,
                     epoch: int = 0) -> Iterator[StudyFeatures]:
        """Every study of the split exactly once, whole, with memory bounded by two row groups and the buffer.

        ``shuffle_buffer=0`` yields studies in store order (their maps are views
        of the current row group). Otherwise row groups are visited in a
        permutation drawn from ``(seed, epoch)`` and studies pass through a
        buffer of ``shuffle_buffer`` studies from which a random one is yielded
        each time: the same order for the same (seed, epoch). Besides that, the
        split's metadata stays in memory (:class:`SplitMetadata`, ~100 bytes an
        image); each study's ``index`` is its row there.
        """
        self.last_stream_stats = StreamStats()
        stream = _SplitStream(self, split, self.last_stream_stats)
        if shuffle_buffer <= 0:
            yield from stream.studies(range(stream.num_groups), copy=False)
            return
        rng = np.random.default_rng([seed, epoch])
        # a buffered study is a copy: it must not pin its row group
        studies = stream.studies(rng.permutation(stream.num_groups).tolist(), copy=True)
        yield from buffer_shuffle(studies, shuffle_buffer, rng, self.last_stream_stats)


def buffer_shuffle(items: Iterator, size: int, rng: np.random.Generator,
                   stats: StreamStats | None = None) -> Iterator:
    """``items`` in a random order through a buffer of ``size``: once the buffer is full, each arriving item takes
    the place of a random buffered one, which is yielded; the rest come out permuted at the end. Memory holds
    ``size`` items whatever the stream's length; the same ``rng`` state gives the same order."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            if stats is not None:
                stats.max_buffered_studies = len(buffer)
            continue
        j = int(rng.integers(len(buffer)))
        buffer[j], item = item, buffer[j]
        yield item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


class _SplitStream:
    """A split read row group by row group; a row group yields the studies that start in it."""

    def __init__(self, store: FeatureStore, split: str, stats: StreamStats):
        self.store, self.meta = store, store.split_metadata(split)
        self.groups = store._row_groups(split)  # (path, index, first row, rows)
        self.num_groups = len(self.groups) if self.meta.num_images else 0
        if not self.num_groups:
            return
        self.group_starts = np.array([g[2] for g in self.groups], dtype=np.int64)
        owner = np.searchsorted(self.group_starts, self.meta.study_starts, side="right") - 1  # non-decreasing
        self.first_study = np.searchsorted(owner, np.arange(self.num_groups + 1))
        # a study runs on into the next row group only in a store written before they held whole studies
        self.cache = _RowGroupCache(capacity=1 if store.manifest.get("study_aligned") else 2, stats=stats)

    def studies(self, order, copy: bool) -> Iterator[StudyFeatures]:
        """The studies of the row groups ``order``, group by group."""
        order = list(order)
        checked = self.store.verify_reads  # then the next row group is decoded while this one is checked
        for k, (g, maps) in enumerate(self.store.read_row_groups(self.groups, order)):
            ahead = self.groups[order[k + 1]][3] if checked and k + 1 < len(order) else None
            self.cache.put(g, maps, ahead_rows=ahead)
            yield from self.studies_of_group(g, copy)
            self.cache.make_room()  # before the next decode, as a read through the cache does

    def _read_group(self, g: int) -> np.ndarray:
        """A row group a study runs on into (older stores only), read when needed."""
        return self.store.read_row_group(*self.groups[g][:2])

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Maps of rows [start, stop): from the row group holding ``start`` and, for a study that runs on, the next."""
        pieces, g = [], int(np.searchsorted(self.group_starts, start, side="right")) - 1
        while start < stop:
            data, base, n = self.cache.get(g, self._read_group), self.groups[g][2], self.groups[g][3]
            end = min(stop, base + n)
            pieces.append(data[start - base:end - base])
            start, g = end, g + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def studies_of_group(self, g: int, copy: bool) -> Iterator[StudyFeatures]:
        m = self.meta
        for s in range(self.first_study[g], self.first_study[g + 1]):
            a, b = int(m.study_starts[s]), int(m.study_stops[s])
            maps = self._rows(a, b).reshape(b - a, *self.store.shape)
            yield StudyFeatures(str(m.study_ids[s]), maps.copy() if copy else maps, m.views[a:b],
                                m.dicom_ids.slice(a, b - a).to_pylist(), m.csv_rows[a:b], index=int(s))


def describe(store: FeatureStore) -> str:
    """A short human summary (used by the command line)."""
    parts = [f"{name} {entry['rows']} images" + (f" ({len(entry['skipped'])} skipped)" if entry["skipped"] else "")
             for name, entry in store.manifest["splits"].items()]
    size = sum((store.path / s["file"]).stat().st_size for e in store.manifest["splits"].values() for s in e["shards"])
    return (f"feature store {store.path}: {', '.join(parts)}; maps {list(store.shape)} {store.manifest['dtype']} "
            f"({store.manifest['layout']}), {size / 1e6:.1f} MB, backbones: "
            + json.dumps({k: v["weights_sha256"][:12] for k, v in store.manifest["backbones"].items()}))
