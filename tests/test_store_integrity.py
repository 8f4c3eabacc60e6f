"""A damaged feature store is refused before anything trains on it, in one line naming the shard and the command
that rewrites it; ``chexfusion features`` then rewrites just the damaged shards.

Each case damages a copy of a store of the tiny pipeline (shards of at most 32 rows, row groups of 8), as a
disk, a careless copy or an edit of manifest.json would.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pipeline
import pyarrow.parquet as pq
import pytest

from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.errors import UserError
from chexfusion.feature_store import FeatureStore, checksums
from chexfusion.feature_store import manifest as mf
from chexfusion.feature_store.schema import FEATURES
from chexfusion.io import file_sha256
from chexfusion.stage2.train import check_coverage

STORE = pipeline.SMALL_GROUPS
REWRITE = "run chexfusion features with the config that wrote the store to rewrite the damaged shards"


@pytest.fixture
def store(grouped_store):
    return grouped_store


@pytest.fixture
def copy(store, tmp_path):
    target = tmp_path / "store"
    shutil.copytree(store, target, ignore=shutil.ignore_patterns("_mapped"))  # as written, not yet mapped
    return target


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def edit_manifest(path, change):
    found = manifest(path)
    change(found)
    (path / "manifest.json").write_text(json.dumps(found))


def refused(match, action):
    with pytest.raises(UserError, match=match) as caught:
        action()
    message = str(caught.value)
    assert REWRITE in message and "\n" not in message
    return message


def train_shards(path):
    return [s["file"] for s in manifest(path)["splits"]["train"]["shards"]]


def flip_maps(path, group):
    """Flip 64 bytes in the middle of row group ``group``'s maps (inside a data page, past its header)."""
    parquet = pq.ParquetFile(path)
    column = parquet.metadata.row_group(group).column(parquet.schema_arrow.get_field_index(FEATURES))
    middle = column.data_page_offset + column.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_the_maps_are_refused_when_the_split_is_read_into_memory(copy):
    """Each row group's checksums are checked as the shard is decoded to build the split's mapped copy."""
    name = train_shards(copy)[1]
    flip_maps(copy / name, 2)
    refused(f"shard {name} row group 2: its maps differ from their checksum",
            lambda: FeatureStore(copy).map_split("train"))
    assert not list((copy / "_mapped").glob("train-*.arrow"))  # no mapped copy is left behind
    refused(f"shard {name} row group 2: its maps differ", lambda: FeatureStore(copy).load_split("train"))


def test_a_damaged_row_group_stops_streamed_stage2_training_in_one_line(copy, tiny_data, tiny_stage1, tmp_path,
                                                                        run_cli, repo_root, monkeypatch):
    """The streaming reader checks each row group's maps as it decodes them: training stops at the damaged one,
    before a batch of it is made, with the line naming the shard and the command that rewrites it."""
    name = train_shards(copy)[1]
    flip_maps(copy / name, 1)
    monkeypatch.chdir(repo_root)
    overrides = pipeline.stage2_overrides(tiny_data, tmp_path, copy, tiny_stage1, "damaged",
                                          **{**STORE, "features.reader": "stream"})
    code, _, err = run_cli("stage2", "--config", "stage2/config.yaml", *overrides)
    lines = [line for line in err.splitlines() if not line.startswith("stage2 epoch")]  # progress bars aside
    assert code == 2 and "Traceback" not in err and len(lines) == 1
    assert f"shard {name} row group 1: its maps differ from their checksum" in lines[0] and REWRITE in lines[0]
    assert not (tmp_path / "damaged" / "metrics.json").exists()


@pytest.mark.parametrize("digest, action", [
    ("meta", lambda store: store.split_metadata("train")),
    ("maps", lambda store: [store.read_row_group(path, g) for path, g, _, _ in store.row_groups("train")]),
])
def test_a_streamed_read_checks_each_row_group_against_the_manifest(copy, digest, action):
    name = train_shards(copy)[2]
    edit_manifest(copy, lambda m: m["splits"]["train"]["shards"][2]["row_groups"][1].update({digest: "0" * 16}))
    what = "metadata" if digest == "meta" else "maps"
    refused(f"shard {name} row group 1: its {what} differ from their checksum", lambda: action(FeatureStore(copy)))


def test_the_checksums_hashed_while_writing_are_those_of_the_file_on_disk(store):
    for shard in manifest(store)["splits"]["train"]["shards"]:
        table = pq.read_table(store / shard["file"])
        bounds = np.cumsum([0] + [r["rows"] for r in shard["row_groups"]])
        for record, start, stop in zip(shard["row_groups"], bounds[:-1], bounds[1:]):
            assert record == checksums.row_group_record(table.slice(start, stop - start))
        assert shard["checksum"] == checksums.shard_checksum(shard["row_groups"])


def as_older_store(path):
    """What the writer made before row-group checksums: a whole-file XXH3 per shard, no row-group list."""
    def strip(m):
        del m["row_group_checksums"]
        for entry in m["splits"].values():
            for shard in entry["shards"]:
                del shard["row_groups"]
                shard["checksum"] = mf.file_checksum(path / shard["file"], "xxh3_128")
    edit_manifest(path, strip)


def test_an_older_store_reads_into_memory_checked_whole_and_is_refused_streamed(copy):
    as_older_store(copy)
    assert FeatureStore(copy).map_split("val").num_images == manifest(copy)["splits"]["val"]["rows"]
    message = refused_line("written without row-group checksums", lambda: FeatureStore(copy).split_metadata("train"))
    assert "run chexfusion features with the same config to rewrite it" in message
    name = train_shards(copy)[1]
    flip_maps(copy / name, 2)
    refused(f"shard {name} differs from its checksum", lambda: FeatureStore(copy).map_split("train"))


def refused_line(match, action):
    with pytest.raises(UserError, match=match) as caught:
        action()
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("damage, match", [
    ("rows", "holds .* rows, manifest.json says"),
    ("unlisted", "is not listed in manifest.json"),
    ("deleted", "listed in manifest.json is missing"),
    ("truncated", "cannot be read"),
])
def test_shard_list_and_row_counts_are_checked_when_the_store_opens(copy, damage, match):
    name = train_shards(copy)[2]
    if damage == "rows":
        edit_manifest(copy, lambda m: m["splits"]["train"]["shards"][2].update(rows=7))
    elif damage == "unlisted":
        edit_manifest(copy, lambda m: m["splits"]["train"]["shards"].pop(2))
    elif damage == "deleted":
        (copy / name).unlink()
    else:
        (copy / name).write_bytes((copy / name).read_bytes()[:1000])
    assert name in refused(match, lambda: FeatureStore(copy))


def test_a_shard_of_another_split_copied_over_a_train_shard_is_refused_by_its_rows(copy):
    name = train_shards(copy)[0]
    val = manifest(copy)["splits"]["val"]["shards"][0]
    shutil.copyfile(copy / val["file"], copy / name)
    edit_manifest(copy, lambda m: m["splits"]["train"]["shards"][0].update(rows=val["rows"]))
    refused(f"shard {name} holds rows of split 'val'", lambda: FeatureStore(copy).split_metadata("train"))
    refused(f"shard {name} holds rows of split 'val'", lambda: FeatureStore(copy).load_split("train"))


def test_swapped_shards_are_refused_by_their_checksums_and_break_the_split_coverage(copy, tiny_data):
    first, second = train_shards(copy)[:2]
    (copy / first).rename(copy / "tmp")
    (copy / second).rename(copy / first)
    (copy / "tmp").rename(copy / second)
    refused(f"shard {first} row group 0: its metadata differ", lambda: FeatureStore(copy).split_metadata("train"))

    def swap_entries(m):  # the manifest now agrees with each file: only the split's order is wrong
        shards = m["splits"]["train"]["shards"]
        for key in ("rows", "checksum", "row_groups"):
            shards[0][key], shards[1][key] = shards[1][key], shards[0][key]
    edit_manifest(copy, swap_entries)
    opened = FeatureStore(copy)
    table = read_cxr_lt(tiny_data / "train.csv", classes=[])
    refused(f"shard {first} breaks split 'train'",
            lambda: check_coverage(opened, "train", table, opened.split_metadata("train")))


def test_features_rewrites_just_the_damaged_shards(copy, store, tiny_data, tiny_stage1, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    names = train_shards(copy)
    edit_manifest(copy, lambda m: m["splits"]["train"]["shards"][1].update(checksum="xxh3_128:" + "0" * 32))
    refused(f"shard {names[1]} differs from its checksum", lambda: FeatureStore(copy).verify())
    (copy / names[3]).write_bytes(b"not parquet")
    edit_manifest(copy, lambda m: m["splits"]["train"]["shards"][4]["row_groups"][0].update(maps="0" * 16))
    inodes = {n: (copy / n).stat().st_ino for n in names}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        pipeline.build_features(tiny_data, copy.parent, copy, tiny_stage1, **STORE)
    assert f"shard {names[1]} differs from its checksum in manifest.json: rewriting it" in log.getvalue()
    assert f"shard {names[3]} cannot be read" in log.getvalue()
    assert f"shard {names[4]} differs from its checksum in manifest.json: rewriting it" in log.getvalue()
    kept = [n for n in names if n not in (names[1], names[3], names[4])]
    assert all((copy / n).stat().st_ino == inodes[n] for n in kept)  # the others were not rewritten
    FeatureStore(copy).verify()
    for name in names:
        assert file_sha256(copy / name) == file_sha256(store / name)
    assert manifest(copy) == manifest(store)
