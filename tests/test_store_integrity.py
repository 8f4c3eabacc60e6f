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

import pipeline
import pytest

from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.errors import UserError
from chexfusion.feature_store import FeatureStore
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


def test_flipped_bytes_in_the_maps_are_refused_when_the_split_is_read_into_memory(copy):
    """The shard's checksum is checked as its bytes are read to build the split's mapped copy."""
    name = train_shards(copy)[1]
    data = bytearray((copy / name).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    (copy / name).write_bytes(bytes(data))
    refused(f"shard {name} differs from its checksum", lambda: FeatureStore(copy).map_split("train"))
    assert not list((copy / "_mapped").glob("train-*.arrow"))  # no mapped copy is left behind


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


def test_swapped_shards_break_the_split_coverage(copy, tiny_data):
    first, second = train_shards(copy)[:2]
    rows = {s["file"]: s["rows"] for s in manifest(copy)["splits"]["train"]["shards"]}
    (copy / first).rename(copy / "tmp")
    (copy / second).rename(copy / first)
    (copy / "tmp").rename(copy / second)
    edit_manifest(copy, lambda m: [s.update(rows=rows[second] if s["file"] == first else rows[first])
                                   for s in m["splits"]["train"]["shards"] if s["file"] in (first, second)])
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
    inodes = {n: (copy / n).stat().st_ino for n in names}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        pipeline.build_features(tiny_data, copy.parent, copy, tiny_stage1, **STORE)
    assert f"shard {names[1]} differs from its checksum in manifest.json: rewriting it" in log.getvalue()
    assert f"shard {names[3]} cannot be read" in log.getvalue()
    kept = [n for n in names if n not in (names[1], names[3])]
    assert all((copy / n).stat().st_ino == inodes[n] for n in kept)  # the others were not rewritten
    FeatureStore(copy).verify()
    for name in names:
        assert file_sha256(copy / name) == file_sha256(store / name)
    assert manifest(copy) == manifest(store)
