"""What a store's shards must satisfy before anything trains on them, and the one-line refusal when they do not.

Damage is found where it costs little: the shard list and each file's footer
(its row count) when the store is opened; each row's split, and each row
group's checksums (``checksums.py``: its metadata and its maps, hashed from
the values just decoded), in the reading pass itself, whichever reader reads
it -- a whole shard in memory, a streamed split's metadata, one streamed row
group; coverage (a split holds exactly the rows of its CSV in store order,
less the images recorded as skipped) when stage 2 labels the split.
``chexfusion features`` checks every checksum and rewrites the shards that
fail any of these. Parquet's own page CRCs would check the bytes instead, but
verifying them measured 3-4x slower reads here.

Stores written before row-group checksums: read into memory, each shard is
checked against its whole-file checksum as its bytes are read to write the
mapped copy; streamed, they are refused with the command that rewrites them.

Out of scope: a forger who rewrites shards and manifest consistently (the
checksums are in the manifest they would rewrite; see features/README.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import UserError
from . import checksums
from . import manifest as mf
from .schema import FEATURES

REWRITE = "run chexfusion features with the config that wrote the store to rewrite the damaged shards"


def refusal(store: Path, file: str, what: str) -> UserError:
    """The one line for a damaged shard: which store, which shard, what is wrong, what rewrites it."""
    return UserError(f"feature store {store}: shard {file} {what}: {REWRITE}")


def listed_shards(manifest: dict) -> dict[str, dict]:
    """Shard file name -> its manifest entry, over every split."""
    return {s["file"]: s for entry in manifest["splits"].values() for s in entry["shards"]}


def listing_problems(store: Path, manifest: dict) -> list[tuple[str, str]]:
    """(shard, what) for each listed shard that is missing, unreadable or of another row count, and each shard
    file the manifest does not list. Reads the footers only."""
    listed = listed_shards(manifest)
    problems = []
    for name, shard in listed.items():
        path = store / name
        if not path.is_file():
            problems.append((name, f"listed in {mf.MANIFEST_NAME} is missing"))
            continue
        try:
            rows = pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            problems.append((name, f"cannot be read ({_first_line(exc)})"))
            continue
        if rows != int(shard["rows"]):
            problems.append((name, f"holds {rows} rows, {mf.MANIFEST_NAME} says {shard['rows']}"))
    problems += [(p.name, f"is not listed in {mf.MANIFEST_NAME}") for p in sorted(store.glob("part-*.parquet"))
                 if p.name not in listed]
    return problems


def checked_bytes(store: Path, path: Path, entries: dict[str, dict]) -> bytes:
    """The bytes of shard ``path``, read once and refused unless they match its checksum in the manifest."""
    data = path.read_bytes()
    recorded = mf.recorded_checksum(entries[path.name]) or ""
    algorithm = recorded.partition(":")[0]
    if algorithm not in mf.DIGESTS or mf.bytes_checksum(data, algorithm) != recorded:
        raise refusal(store, path.name, f"differs from its checksum in {mf.MANIFEST_NAME}")
    return data


def old_store_refusal(store: Path) -> UserError:
    """The line for streaming a store written before row-group checksums."""
    return UserError(f"feature store {store} was written without row-group checksums, which a streamed read needs "
                     f"to verify what it reads: run chexfusion features with the same config to rewrite it")


def check_row_group_layout(store: Path, path: Path, sizes: list[int], records: list[dict]) -> None:
    """The shard's row groups (their sizes, from its footer) are those its checksums in the manifest cover."""
    if sizes != [int(r["rows"]) for r in records]:
        raise refusal(store, path.name, f"has row groups of {sizes} rows, its checksums in {mf.MANIFEST_NAME} cover "
                                        f"{[int(r['rows']) for r in records]}")


def check_meta(store: Path, path: Path, table, records: list[dict]) -> None:
    """Each row group's slice of ``table`` (a whole shard's metadata columns) has its metadata checksum."""
    covered = sum(int(r["rows"]) for r in records)
    if table.num_rows != covered:
        raise refusal(store, path.name, f"holds {table.num_rows} rows, its row-group checksums in "
                                        f"{mf.MANIFEST_NAME} cover {covered}")
    start = 0
    for g, record in enumerate(records):
        check_group_meta(store, path, g, table.slice(start, record["rows"]), records)
        start += int(record["rows"])


def check_group_meta(store: Path, path: Path, index: int, table, records: list[dict]) -> None:
    """The metadata columns of row group ``index`` of ``path`` (``table``: its rows) have its checksum."""
    if checksums.meta_digest(table) != records[index]["meta"]:
        raise refusal(store, path.name, f"row group {index}: its metadata differ from their checksum in "
                                        f"{mf.MANIFEST_NAME}")


def check_maps(store: Path, path: Path, index: int, column, records: list[dict]) -> None:
    """The maps just decoded from row group ``index`` of ``path`` have its checksum."""
    if checksums.maps_digest(column) != records[index]["maps"]:
        raise refusal(store, path.name, f"row group {index}: its maps differ from their checksum in "
                                        f"{mf.MANIFEST_NAME}")


def check_row_group(store: Path, path: Path, index: int, table, records: list[dict]) -> None:
    """Row group ``index`` read whole (its metadata and maps): both its checksums."""
    check_group_meta(store, path, index, table, records)
    check_maps(store, path, index, table.column(FEATURES), records)


def checksum_problems(store: Path, manifest: dict) -> list[tuple[str, str]]:
    """(shard, what) for each present shard whose bytes differ from its checksum in the manifest (reads them)."""
    return [(name, f"differs from its checksum in {mf.MANIFEST_NAME}")
            for name, shard in listed_shards(manifest).items()
            if (store / name).is_file() and not mf.shard_matches(store / name, shard)]


@contextmanager
def reading(store: Path, path: Path):
    """Turn a pyarrow error while reading ``path`` (a failed page CRC, a truncated page) into the refusal."""
    try:
        yield
    except (OSError, pa.ArrowInvalid) as exc:
        raise refusal(store, path.name, f"cannot be read ({_first_line(exc)})") from None


def check_split_column(store: Path, path: Path, table, split: str) -> None:
    """Every row of a shard read for ``split`` says so (a shard of another split copied over it does not)."""
    column = table.column("split")
    if len(column) and not pc.all(pc.equal(column, split)).as_py():
        other = pc.unique(column).to_pylist()
        raise refusal(store, path.name, f"holds rows of split {', '.join(map(repr, other))}, "
                                        f"{mf.MANIFEST_NAME} lists it under '{split}'")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_coverage(store: Path, split: str, entry: dict, expected_rows, stored_rows) -> None:
    """The split holds exactly ``expected_rows`` (its CSV's rows in store order) less the images recorded as
    skipped, in that order: a shard swapped with another, dropped from the manifest or shifted is refused,
    named by the shard where the first difference lies."""
    import numpy as np

    expected, stored = np.asarray(expected_rows, np.int64), np.asarray(stored_rows, np.int64)
    if len(expected) == len(stored) and np.array_equal(expected, stored):
        return
    n = min(len(expected), len(stored))
    first = int(np.flatnonzero(expected[:n] != stored[:n])[0]) if (expected[:n] != stored[:n]).any() else n
    bounds = np.cumsum([int(s["rows"]) for s in entry["shards"]])
    shards = entry["shards"]
    name = shards[min(int(np.searchsorted(bounds, first, side="right")), len(shards) - 1)]["file"] if shards \
        else "(none)"
    raise refusal(store, name, f"breaks split '{split}': its rows from store row {first} on are not the CSV's "
                               f"rows in store order ({len(stored)} rows stored, {len(expected)} expected)")
