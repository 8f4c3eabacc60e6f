"""Stage 2 on a streamed store: which reader a split gets, the streamed items, a streamed run and its resume.

A store of the tiny pipeline written with row groups of 8 rows (studies
straddle them; the training split is 19 row groups in 5 shards) stands in for a
store larger than memory: ``features.max_memory_gb`` 1e-6 makes every split
stream.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pipeline
import pytest
import torch
from accelerate.data_loader import prepare_data_loader

from chexfusion import training
from chexfusion.config import from_dict, read_yaml
from chexfusion.data.labels import LabelPolicy
from chexfusion.errors import UserError
from chexfusion.feature_store import FeatureConfig, FeatureStore, checksums
from chexfusion.io import file_sha256
from chexfusion.losses import build_loss
from chexfusion.metrics import json_safe
from chexfusion.stage2.baseline import stage1_baseline
from chexfusion.stage2.config import Stage2Config
from chexfusion.stage2.model import load_stage2_run
from chexfusion.stage2.studies import (
    MemorySource,
    ShardedSource,
    StreamSource,
    StudyItems,
    choose_reader,
    collate_studies,
    open_source,
)
from chexfusion.stage2.train import Split, split_metrics, study_probs

STORE = pipeline.SMALL_GROUPS
STREAMED = {**STORE, "features.max_memory_gb": "0.000001", "features.shuffle_buffer": 16, "seed": 5,
            "train.checkpoint_every_steps": 2}
BATCH = 8  # pipeline.stage2_overrides: train.batch_size


@pytest.fixture(scope="module")
def store(grouped_store, repo_root, monkeypatch_module):
    monkeypatch_module.chdir(repo_root)  # the stage-2 runs below name stage2/config.yaml
    return grouped_store


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def streamed_run(tiny_data, tiny_stage1, store):
    """Stage 2 with every split streamed (auto, under a 1e-6 GB budget); its log."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        run = pipeline.train_stage2(tiny_data, store.parent, store, tiny_stage1, name="streamed", **STREAMED)
    return run, log.getvalue()


def labelled(store_path, split="train"):
    store = FeatureStore(store_path)
    meta = store.split_metadata(split)
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (len(meta), 3)).astype(np.float32)
    return store, meta, targets, np.ones_like(targets)


def streamed(store_path, epoch=0, block=BATCH, split="train", shuffle_buffer=16):
    store, _, targets, mask = labelled(store_path, split)
    dataset = StudyItems(StreamSource(store, split, shuffle_buffer=shuffle_buffer, seed=5, block=block), targets,
                         mask, max_images=2)
    dataset.set_epoch(epoch)
    return dataset


def in_memory(store_path, epoch=0, block=BATCH, split="train", shuffle=True):
    store, _, targets, mask = labelled(store_path, split)
    dataset = StudyItems(MemorySource(store, split, shuffle=shuffle, seed=5, block=block), targets, mask, max_images=2)
    dataset.set_epoch(epoch)
    return dataset


def studies_of(batches) -> list[int]:
    return [int(s) for batch in batches for s in batch["study"]]


# ---- the reader each split gets ----------------------------------------------------------------------------


def test_auto_streams_a_split_over_the_memory_budget_and_the_key_forces_either(store):
    opened = FeatureStore(store)
    reader, why = choose_reader(FeatureConfig(max_memory_gb=1e-6), opened, "train")
    assert reader == "stream" and "features.max_memory_gb" in why
    assert choose_reader(FeatureConfig(), opened, "train")[0] == "memory"  # 4 GB: the tiny split fits
    assert choose_reader(FeatureConfig(reader="memory", max_memory_gb=1e-6), opened, "train")[0] == "memory"
    assert choose_reader(FeatureConfig(reader="stream"), opened, "train") == ("stream", "features.reader is stream")


def test_bad_reader_or_shuffle_buffer_is_a_user_error_naming_the_key(tiny_data, tiny_stage1, store, tmp_path,
                                                                      run_cli, repo_root, monkeypatch):
    with pytest.raises(UserError, match="features.reader"):
        FeatureConfig(reader="disk").validate()
    with pytest.raises(UserError, match="features.shuffle_buffer"):
        FeatureConfig(shuffle_buffer=0).validate()
    monkeypatch.chdir(repo_root)
    code, _, err = run_cli("stage2", "--config", "stage2/config.yaml",
                           *pipeline.stage2_overrides(tiny_data, tmp_path, store, tiny_stage1, "bad"),
                           "features.reader=disk")
    assert code == 2 and "features.reader" in err and len(err.strip().splitlines()) == 1


# ---- the streamed items ------------------------------------------------------------------------------------


def test_streamed_items_are_the_in_memory_items(store):
    """Same maps (cut to max_images), views, study index and labels from both sources, whatever the order."""
    split = FeatureStore(store).load_split("train")
    by_study = {it["study"]: it for it in in_memory(store)}
    dataset = streamed(store)
    items = list(dataset)
    assert sorted(by_study) == sorted(it["study"] for it in items) == list(range(len(split)))
    assert any(len(it["views"]) < len(split.study(it["study"]).views) for it in items)  # some studies are cut
    for item in items:
        expected = by_study[item["study"]]
        assert item.keys() == expected.keys()
        for key in ("features", "views", "target", "mask"):
            assert item[key].dtype == expected[key].dtype and torch.equal(item[key], expected[key]), key
    stats = dataset.source.store.last_stream_stats  # memory stays bounded: two row groups and the buffer
    assert stats.max_decoded_row_groups <= 2 and stats.max_buffered_studies == 16


@pytest.mark.parametrize("items", [streamed, in_memory])
def test_every_study_once_per_epoch_in_an_order_drawn_from_seed_and_epoch(store, items):
    n = len(FeatureStore(store).split_metadata("train"))
    orders = {epoch: [it["study"] for it in items(store, epoch)] for epoch in (0, 1)}
    for order in orders.values():
        assert sorted(order) == list(range(n))
    assert orders[0] != orders[1]
    assert [it["study"] for it in items(store, 0)] == orders[0]
    unshuffled = streamed(store, 0, split="val", shuffle_buffer=0) if items is streamed else \
        in_memory(store, 0, split="val", shuffle=False)
    assert [it["study"] for it in unshuffled] == \
        list(range(len(FeatureStore(store).split_metadata("val"))))  # evaluation: store order


def test_in_memory_training_order_is_the_permutation_of_seed_and_epoch(store):
    """The order the in-memory sampler drew before both readers shared one Dataset: the same runs train the same."""
    n = len(FeatureStore(store).split_metadata("train"))
    sampler = training.EpochPermutationSampler(n, seed=5)
    sampler.set_epoch(3)
    assert [it["study"] for it in in_memory(store, epoch=3)] == list(sampler)


@pytest.mark.parametrize("items", [streamed, in_memory])
@pytest.mark.parametrize("drop_last", [True, False])
def test_two_workers_give_the_batches_of_one(store, drop_last, items):
    """Workers split the studies by whole batches: the same batches in the same order, every study once."""
    def batches(workers):
        loader = torch.utils.data.DataLoader(items(store, epoch=1), batch_size=BATCH, collate_fn=collate_studies,
                                             num_workers=workers, drop_last=drop_last)
        return list(loader), len(loader)

    (one, length), (two, _) = batches(0), batches(2)
    n = len(FeatureStore(store).split_metadata("train"))
    order = [it["study"] for it in items(store, epoch=1)]
    assert studies_of(two) == studies_of(one) == order[:len(order) - (n % BATCH if drop_last else 0)]
    assert len(one) == length  # the length fit and the schedule count on
    for a, b in zip(one, two):
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["image_mask"], b["image_mask"])


@pytest.mark.parametrize("workers", [0, 2])
def test_two_processes_share_each_global_batch_as_in_memory(store, workers):
    """Under accelerate (dispatch_batches off) process r takes its slice of every global batch of 2 x 4 studies."""
    ranks = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(streamed(store, epoch=2, block=2 * 4), batch_size=4,
                                             collate_fn=collate_studies, num_workers=workers, drop_last=True)
        shard = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False,
                                    dispatch_batches=False)
        shard.set_epoch(2)
        ranks.append([studies_of([batch]) for batch in shard])
    order = [it["study"] for it in streamed(store, epoch=2)]
    steps = len(order) // 8
    assert len(ranks[0]) == len(ranks[1]) == steps == len(loader) // 2  # steps_per_epoch of prepare_training
    assert [s for k in range(steps) for s in ranks[0][k] + ranks[1][k]] == order[:steps * 8]


# ---- a streamed run ----------------------------------------------------------------------------------------


def test_streamed_run_trains_and_writes_metrics(streamed_run):
    run, log = streamed_run
    for split in ("train", "val", "test"):
        assert f"stage 2 reads split '{split}' streamed: its maps take" in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["mAP"] is not None and metrics["test"]["study_level"]["mAP"] is not None
    assert set(metrics["stage1_baseline"]) == {"validation", "test"}
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["train_loss"] > 0 for h in history)
    assert load_stage2_run(run).classes == metrics["classes"]


def test_data_loader_workers_do_not_change_a_streamed_run(streamed_run, tiny_data, tiny_stage1, store):
    """train.num_workers is an execution setting: two workers train the weights of none."""
    with contextlib.redirect_stdout(io.StringIO()):
        run = pipeline.train_stage2(tiny_data, store.parent, store, tiny_stage1, name="workers", **STREAMED,
                                    **{"train.num_workers": 2})
    assert file_sha256(run / "model.safetensors") == file_sha256(streamed_run[0] / "model.safetensors")
    assert (run / "metrics.json").read_text() == (streamed_run[0] / "metrics.json").read_text()


def test_same_weights_score_the_same_streamed_and_in_memory(streamed_run, store, tiny_data):
    """Validation and test metrics, and the stage-1 baseline, through both readers (the run streamed them all)."""
    run = streamed_run[0]
    cfg = from_dict(Stage2Config, read_yaml(run / "config.yaml"))
    model, metrics = load_stage2_run(run).model, json.loads((run / "metrics.json").read_text())
    classes, prevalence = metrics["classes"], np.asarray(json.loads((run / "run.json").read_text())["train_prevalence"])
    opened, policy, accelerator = FeatureStore(store), LabelPolicy(), training.make_accelerator(cfg.train)
    csvs = {"val": tiny_data / "development.csv", "test": tiny_data / "test.csv"}
    memory_splits, scored = {}, {}
    for name, csv in csvs.items():
        for reader in ("memory", "stream"):
            source = open_source(opened, name, reader, shuffle=False, seed=cfg.seed, shuffle_buffer=16)
            assert isinstance(source, MemorySource if reader == "memory" else StreamSource)
            split = Split(opened, name, source, str(csv), classes, policy, cfg.model.max_images)
            loader = torch.utils.data.DataLoader(split.dataset, batch_size=BATCH, collate_fn=collate_studies)
            scored[name, reader] = split_metrics(split, *study_probs(model, loader, accelerator, name), classes,
                                                 prevalence, build_loss(cfg.loss.name, cfg.loss.params, prevalence))
            if reader == "memory":
                memory_splits[name] = split
    for name, key in (("val", "validation"), ("test", "test")):
        assert_close(scored[name, "stream"], scored[name, "memory"])
        assert_close(metrics[key], scored[name, "memory"])
    assert_close(metrics["stage1_baseline"],
                 stage1_baseline(cfg, opened, memory_splits, classes, prevalence, accelerator.device))


def assert_close(a, b, path=""):
    """Equal up to 1e-6 (NaN and JSON's null alike: metrics.json went through json_safe)."""
    a, b = (json.loads(json.dumps(json_safe(x))) for x in (a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_killed_streamed_run_resumes_to_the_same_result(streamed_run, tiny_data, tiny_stage1, store, repo_root):
    """kill -9 in the middle of epoch 2 (after a checkpoint at step 12 of 20), re-run: the uninterrupted result."""
    whole = streamed_run[0]
    args = pipeline.stage2_overrides(tiny_data, store.parent, store, tiny_stage1, "killed", **STREAMED)
    killed = subprocess.run([sys.executable, "tests/kill_at_step.py", "13", "stage2", "--config", "stage2/config.yaml",
                             *args], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    progress = json.loads((store.parent / "killed" / "checkpoint" / "progress.json").read_text())
    assert progress["epoch"] == 1 and progress["step_in_epoch"] == 2
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        resumed = pipeline.train_stage2(tiny_data, store.parent, store, tiny_stage1, name="killed", **STREAMED)
    assert "resuming" in log.getvalue()
    assert file_sha256(resumed / "model.safetensors") == file_sha256(whole / "model.safetensors")
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (whole, resumed))
    assert a["validation"] == b["validation"] and a["test"] == b["test"]
    history = [[{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
                for line in (r / "history.jsonl").read_text().splitlines()] for r in (whole, resumed)]
    assert history[0] == history[1]


# ---- the training split streamed in per-process shares -----------------------------------------------------


def sharded(store_path, rank=0, world=1, epoch=0, batch=4, lanes=4, store=None):
    store = store or FeatureStore(store_path)
    meta = store.split_metadata("train")
    targets = np.zeros((len(meta), 3), np.float32)
    dataset = StudyItems(ShardedSource(store, "train", seed=5, batch=batch, rank=rank, world=world, lanes=lanes,
                                       shuffle_buffer=4), targets, np.ones_like(targets), max_images=2)
    dataset.set_epoch(epoch)
    return dataset


def sharded_batches(store_path, rank, world, workers, epoch=0, batch=4):
    loader = torch.utils.data.DataLoader(sharded(store_path, rank, world, epoch, batch), batch_size=batch,
                                         collate_fn=collate_studies, num_workers=workers, drop_last=True)
    return [[int(s) for s in b["study"]] for b in loader]


def test_store_row_groups_and_shards_hold_whole_studies(store):
    opened = FeatureStore(store)
    meta = opened.split_metadata("train")
    starts = set(meta.study_starts.tolist())
    groups = opened.row_groups("train")
    assert len(groups) > 4 and all(first in starts for _, _, first, _ in groups)
    assert opened.manifest["study_aligned"] is True
    for shard in opened.manifest["splits"]["train"]["shards"]:  # the checksums hashed while writing are the file's
        assert shard["row_groups"] == checksums.file_records(store / shard["file"])
        assert shard["checksum"] == checksums.shard_checksum(shard["row_groups"])


@pytest.mark.parametrize("world", [1, 2])
def test_sharded_epoch_trains_every_study_once_whatever_the_workers(store, world):
    """Each process its own batches, the same with 0, 1, 2 or 4 workers; together every study at most once, and
    all of them but fewer than one global batch; another epoch, another order."""
    n, batch = len(FeatureStore(store).split_metadata("train")), 4
    epochs = []
    for epoch in (0, 1):
        ranks = [sharded_batches(store, rank, world, workers=0, epoch=epoch) for rank in range(world)]
        for rank in range(world):
            for workers in (1, 2, 4):
                assert sharded_batches(store, rank, world, workers, epoch=epoch) == ranks[rank], (rank, workers)
        assert all(len(r) == n // (batch * world) for r in ranks)  # the steps fit counts on, on every process
        seen = [s for r in ranks for b in r for s in b]
        assert len(seen) == len(set(seen)) and n - len(seen) < batch * world
        epochs.append(seen)
    assert epochs[0] != epochs[1]


def test_sharded_processes_read_only_their_own_row_groups(store, monkeypatch):
    """Over all processes and lanes an epoch reads each row group once, twice at most where two shares meet."""
    opened = FeatureStore(store)
    reads = []
    decode = opened._decode_maps  # what every read of a row group's maps goes through
    monkeypatch.setattr(opened, "_decode_maps",
                        lambda parquet, path, index: reads.append((path, index)) or decode(parquet, path, index))
    world, lanes = 2, 4
    for rank in range(world):
        list(sharded(store, rank, world, store=opened, lanes=lanes))
    groups = len(opened.row_groups("train"))
    assert len(reads) <= groups + world * lanes - 1
    assert len(set(reads)) >= groups - 1  # all but the row groups of the studies left for the next epoch


def test_sharded_stream_needs_a_study_aligned_store(store, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(store, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["study_aligned"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="run chexfusion features with the same config to rewrite it"):
        sharded(copy)
    FeatureStore(copy).load_split("train")  # in memory, an older store still reads


def test_in_memory_split_is_mapped_from_one_shared_copy(store):
    """map_split gives load_split's split, from a file written once and mapped again (its inode kept) after."""
    opened = FeatureStore(store)
    loaded, mapped = opened.load_split("val"), opened.map_split("val")
    assert loaded.meta.equals(mapped.meta) and np.array_equal(loaded.features, mapped.features)
    path = opened.mapped_path("val")
    inode = path.stat().st_ino
    again = FeatureStore(store).map_split("val")
    assert path.stat().st_ino == inode and np.array_equal(again.features, loaded.features)
    assert not again.chunks[0].flags.writeable  # a view of the mapped file, not a private copy
