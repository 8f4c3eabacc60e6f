"""The Parquet feature store: what it holds, how it is routed, resumed, refused when stale, and streamed.

A tiny untrained stage-1 run (convnext_atto at 64 px, 320 x 2 x 2 maps) and a
handful of JPEGs written here are enough: nothing is asked of the network but
to be the same function when the store is written and when it is checked.
"""

import functools
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import xxhash
from PIL import Image

from chexfusion.config import save_config
from chexfusion.data.images import Preprocess
from chexfusion.data.studies import canonical_order
from chexfusion.data.views import VIEW_INDEX
from chexfusion.errors import UserError
from chexfusion.feature_store import FeatureConfig, FeatureStore, build_store, checksums
from chexfusion.feature_store.writer import KILL_HOOK_ENV
from chexfusion.run_folder import save_weights
from chexfusion.stage1.config import Stage1Config
from chexfusion.stage1.model import build_image_model, load_stage1_run, write_run_info

IMAGE_SIZE = 64
HEADER = "dicom_id,subject_id,study_id,ViewPosition,fpath,Edema"
# (dicom_id, subject, study, ViewPosition): studies of 1 to 4 images, views out of canonical order in the CSV,
# and an unknown view (blank code); study s2's rows are not adjacent in the CSV.
TRAIN_ROWS = [("t01", "p1", "s1", "LATERAL"), ("t02", "p1", "s1", "PA"), ("t03", "p1", "s2", "AP"),
              ("t04", "p2", "s3", ""), ("t05", "p2", "s3", "LL"), ("t06", "p2", "s3", "PA"), ("t07", "p2", "s3", "AP"),
              ("t08", "p1", "s2", "LATERAL"), ("t09", "p3", "s4", "PA"), ("t10", "p3", "s5", ""),
              ("t11", "p3", "s5", "LATERAL")]
VAL_ROWS = [("v1", "p9", "s9", "PA"), ("v2", "p9", "s9", "LATERAL"), ("v3", "p8", "s8", "")]


def write_csv(path: Path, rows, fpath=lambda d: f"img/{d}.jpg"):
    path.write_text("\n".join([HEADER] + [f"{d},{p},{s},{v},{fpath(d)},0" for d, p, s, v in rows]) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    for d, *_ in TRAIN_ROWS + VAL_ROWS:
        Image.fromarray(rng.integers(0, 256, (72, 60), dtype=np.uint8)).save(root / "img" / f"{d}.jpg")
    write_csv(root / "train.csv", TRAIN_ROWS)
    write_csv(root / "val.csv", VAL_ROWS)
    return root


def make_run(folder: Path, seed: int, views: str = "all") -> Path:
    """A stage-1 run folder as stage 1 leaves it, with untrained weights drawn from ``seed``."""
    cfg = Stage1Config(name=folder.name)
    cfg.data.image_size, cfg.data.views = IMAGE_SIZE, views
    torch.manual_seed(seed)
    model = build_image_model(cfg, num_classes=1)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")
    save_weights(model, folder / "model.safetensors")
    write_run_info(folder, cfg, ["Edema"], [0.1], Preprocess(image_size=IMAGE_SIZE), model)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"all": make_run(root / "all", 0), "frontal": make_run(root / "frontal", 1, "frontal"),
            "lateral": make_run(root / "lateral", 2, "lateral")}


def splits_of(data: Path) -> dict:
    return {"train": (str(data / "train.csv"), str(data)), "val": (str(data / "val.csv"), str(data))}


def features_cfg(store: Path, run: Path, **kw) -> FeatureConfig:
    base = dict(store=str(store), shared_backbone=str(run), shard_rows=3, row_group_rows=2, batch_size=2)
    return FeatureConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def store(tmp_path_factory, data, runs) -> Path:
    return build_store(features_cfg(tmp_path_factory.mktemp("stores") / "shared", runs["all"]), splits_of(data),
                       progress=False)


@functools.lru_cache(maxsize=None)
def loaded_run(run_dir: Path):
    return load_stage1_run(run_dir)


def direct_maps(run_dir: Path, data: Path, dicom_ids, pool=None) -> np.ndarray:
    """The backbone's maps computed here, image by image, as float32 [n, C, h, w]."""
    run = loaded_run(run_dir)
    images = torch.stack([run.preprocess.read(data / "img" / f"{d}.jpg") for d in dicom_ids])
    with torch.no_grad():
        maps = run.model.forward_features(images)
        if pool:
            maps = torch.nn.functional.adaptive_avg_pool2d(maps, pool)
    return maps.numpy()


def file_bytes(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file: equal dicts mean byte-identical folders, and a failure prints short hashes."""
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- what a store holds ------------------------------------------------------------------------------------


def test_store_holds_one_row_per_image_grouped_by_study_in_canonical_order(store, data):
    shards = sorted(store.glob("part-*.parquet"))  # plain pandas, no chexfusion
    frame = pd.read_parquet(shards, columns=["dicom_id", "study_id", "view", "split", "csv_row"])
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    csv = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    assert sorted(train["dicom_id"]) == sorted(csv["dicom_id"])
    # studies in order of first appearance, each contiguous, images frontal -> lateral -> unknown, ties by id
    assert list(dict.fromkeys(train["study_id"])) == ["s1", "s2", "s3", "s4", "s5"]
    assert train["dicom_id"].tolist() == ["t02", "t01", "t03", "t08", "t06", "t07", "t05", "t04", "t09", "t11",
                                          "t10"]
    assert train["view"].tolist()[4:8] == ["frontal", "frontal", "lateral", "unknown"]
    csv_frame = csv.assign(view=train.set_index("dicom_id").loc[csv["dicom_id"], "view"].to_numpy())
    for s in train["study_id"].unique():
        rows = csv.index[csv["study_id"] == s].to_numpy()
        assert csv.loc[canonical_order(csv_frame, rows), "dicom_id"].tolist() == \
            train.loc[train["study_id"] == s, "dicom_id"].tolist()
    # csv_row points back at the image's line in the CSV
    assert (csv["dicom_id"].to_numpy()[train["csv_row"]] == train["dicom_id"].to_numpy()).all()


def test_shards_are_plain_parquet_with_the_documented_schema(store):
    manifest = json.loads((store / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    # the store order cut into shards of at most 3 rows and row groups of at most 2, never inside a study (a
    # larger study alone): studies of 1 to 4 images in store order give these
    assert [s["rows"] for s in shards] == [2, 2, 4, 3]
    assert [s["file"] for s in shards] == [f"part-train-0000{k}.parquet" for k in range(4)]
    owner = {}
    for shard in shards:
        path = store / shard["file"]
        pf = pq.ParquetFile(path)  # the checksums hashed while writing are those of the row groups on disk
        assert shard["row_groups"] == [checksums.row_group_record(pf.read_row_group(g))
                                       for g in range(pf.metadata.num_row_groups)]
        assert shard["checksum"] == checksums.shard_checksum(shard["row_groups"])
        for g in range(pf.metadata.num_row_groups):
            studies = pf.read_row_group(g, columns=["study_id"]).column("study_id").to_pylist()
            assert len(studies) <= 2 or len(set(studies)) == 1
            for study in set(studies):
                assert owner.setdefault(study, (shard["file"], g)) == (shard["file"], g), study
    table = pq.read_table(store / shards[0]["file"])
    schema = table.schema
    assert schema.field("dicom_id").type == pa.string() and schema.field("csv_row").type == pa.int32()
    assert schema.field("features").type == pa.binary(320 * 2 * 2 * 2)  # float16 bytes of a 320 x 2 x 2 map
    assert json.loads(schema.field("features").metadata[b"shape"]) == [320, 2, 2]
    # readable without chexfusion: the cell is the little-endian float16 map
    cell = table.column("features")[0].as_py()
    assert np.frombuffer(cell, "<f2").reshape(320, 2, 2).shape == (320, 2, 2)


def test_manifest_names_backbone_preprocessing_shape_and_sources(store, data, runs):
    m = json.loads((store / "manifest.json").read_text())
    run_info = json.loads((runs["all"] / "run.json").read_text())
    assert m["complete"] is True and m["format_version"] == 1
    assert m["routing"] == "shared" and m["unknown_view"] is None
    assert m["view_routing"] == {"frontal": "shared", "lateral": "shared", "unknown": "shared"}
    assert m["backbones"]["shared"]["weights_sha256"] == run_info["weights_sha256"]
    assert m["backbones"]["shared"]["backbone"] == "convnext_atto"
    assert m["backbones"]["shared"]["trained_on_views"] == "all"
    assert m["preprocess"] == Preprocess(image_size=IMAGE_SIZE).to_dict() and m["image_size"] == IMAGE_SIZE
    assert m["dtype"] == "float16" and m["shape"] == [320, 2, 2] and m["pool"] is None
    assert m["splits"]["train"]["csv_sha256"] == sha256(data / "train.csv")
    assert (m["splits"]["train"]["rows"], m["splits"]["val"]["rows"]) == (11, 3)
    assert m["splits"]["val"]["skipped"] == []
    assert not (store / "_progress").exists()


def test_features_equal_a_direct_forward_pass(store, data, runs):
    split = FeatureStore(store).load_split("train")
    ids = split.meta["dicom_id"].tolist()
    expected = direct_maps(runs["all"], data, ids).reshape(len(ids), -1)
    assert split.features.dtype == np.float16 and split.features.shape == (11, 1280)
    np.testing.assert_allclose(split.features.astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_list_layout_float32_and_pooling(tmp_path, data, runs):
    cfg = features_cfg(tmp_path / "s", runs["all"], layout="list", dtype="float32", pool=[1, 1], shard_rows=100)
    path = build_store(cfg, {"val": splits_of(data)["val"]}, progress=False)
    table = pq.read_table(path / "part-val-00000.parquet")
    assert table.schema.field("features").type == pa.list_(pa.field("element", pa.float32(), nullable=False), 320)
    opened = FeatureStore(path)
    assert opened.shape == (320, 1, 1) and opened.manifest["feature_shape"] == [320, 2, 2]
    split = opened.load_split("val")
    expected = direct_maps(runs["all"], data, split.meta["dicom_id"], pool=(1, 1)).reshape(3, -1)
    np.testing.assert_allclose(split.features, expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.asarray(table.column("features").to_pylist(), np.float32), split.features)


def test_per_view_routing_sends_each_view_through_its_backbone(tmp_path, data, runs):
    cfg = features_cfg(tmp_path / "pv", runs["all"], routing="per_view", frontal_backbone=str(runs["frontal"]),
                       lateral_backbone=str(runs["lateral"]), unknown_view="lateral")
    opened = FeatureStore(build_store(cfg, splits_of(data), progress=False))
    assert opened.manifest["view_routing"] == {"frontal": "frontal", "lateral": "lateral", "unknown": "lateral"}
    split = opened.load_split("train")
    views = split.meta["view"].to_numpy()
    ids = split.meta["dicom_id"].to_numpy()
    for view, run in (("frontal", "frontal"), ("lateral", "lateral"), ("unknown", "lateral")):
        rows = np.flatnonzero(views == view)
        assert len(rows)
        expected = direct_maps(runs[run], data, ids[rows]).reshape(len(rows), -1)
        np.testing.assert_allclose(split.take(rows).astype(np.float32), expected, rtol=2e-3, atol=2e-3)
        other = direct_maps(runs["frontal" if run == "lateral" else "lateral"], data, ids[rows[:1]]).reshape(1, -1)
        assert not np.allclose(split.take(rows[:1]).astype(np.float32), other, rtol=2e-3, atol=2e-3)


def test_per_view_backbone_trained_on_the_other_view_is_refused(tmp_path, data, runs):
    cfg = features_cfg(tmp_path / "x", runs["all"], routing="per_view", frontal_backbone=str(runs["lateral"]),
                       lateral_backbone=str(runs["lateral"]))
    with pytest.raises(UserError, match="features.frontal_backbone.*trained on lateral images only"):
        build_store(cfg, splits_of(data), progress=False)


# ---- resume, atomicity, processes --------------------------------------------------------------------------


def write_stage2_config(path: Path, data: Path, store: Path, run: Path, **features) -> Path:
    import yaml

    cfg = {"data": {"image_root": str(data), "train_csv": str(data / "train.csv"), "val_csv": str(data / "val.csv"),
                    "test_csv": None},
           "features": {"store": str(store), "shared_backbone": str(run), "shard_rows": 2, "row_group_rows": 2,
                        "batch_size": 2, **features}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_killed_extraction_resumes_to_a_byte_identical_store(tmp_path, data, runs, store, run_cli):
    config = write_stage2_config(tmp_path / "stage2.yaml", data, tmp_path / "killed", runs["all"])
    env = {**os.environ, KILL_HOOK_ENV: "3"}  # SIGKILL between writing shard 3's temp file and renaming it
    killed = subprocess.run([sys.executable, "-m", "chexfusion", "features", "--config", str(config)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    partial = tmp_path / "killed"
    assert json.loads((partial / "manifest.json").read_text())["complete"] is False
    assert sorted(p.name for p in partial.glob("part-*.parquet")) == [f"part-train-0000{k}.parquet" for k in range(3)]
    assert list(partial.glob(".part-*.tmp"))  # the interrupted shard's temporary file
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore(partial)
    before = {p.name: p.stat().st_ino for p in partial.glob("part-*.parquet")}

    code, out, err = run_cli("features", "--config", config)
    assert code == 0, err
    assert {p: (partial / p).stat().st_ino for p in before} == before  # finished shards were not rewritten
    clean = tmp_path / "clean"
    code, _, err = run_cli("features", "--config", config, f"features.store={clean}")
    assert code == 0, err
    assert file_bytes(partial) == file_bytes(clean)
    assert len(file_bytes(clean)) == 1 + 5 + 2  # manifest, 5 train shards of whole studies (<= 2 rows but one of
    # 4: a study larger than shard_rows is a shard of its own), 2 val shards


def test_a_store_killed_before_row_group_checksums_is_rewritten_with_them(tmp_path, data, runs, run_cli):
    """An interrupted store of an earlier version (whole-file checksums, no row-group ones) is rewritten by the
    resume, which says why: a streamed read needs every row group's checksums."""
    config = write_stage2_config(tmp_path / "stage2.yaml", data, tmp_path / "killed", runs["all"])
    env = {**os.environ, KILL_HOOK_ENV: "2"}
    killed = subprocess.run([sys.executable, "-m", "chexfusion", "features", "--config", str(config)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    partial = tmp_path / "killed"
    manifest = json.loads((partial / "manifest.json").read_text())
    del manifest["row_group_checksums"]
    (partial / "manifest.json").write_text(json.dumps(manifest))
    for sidecar in (partial / "_progress").glob("*.json"):
        record = json.loads(sidecar.read_text())
        record["checksum"] = "xxh3_128:" + xxhash.xxh3_128((partial / record["file"]).read_bytes()).hexdigest()
        del record["row_groups"]
        sidecar.write_text(json.dumps(record))

    code, out, err = run_cli("features", "--config", config, "--verify")
    assert code == 0, err
    assert "was made differently (row_group_checksums" in out
    shards = json.loads((partial / "manifest.json").read_text())["splits"]["train"]["shards"]
    assert all(s["checksum"].startswith(checksums.ALGORITHM + ":") and s["row_groups"] for s in shards)


def test_two_processes_under_torchrun_write_the_same_store_as_one(tmp_path, data, runs, store):
    config = write_stage2_config(tmp_path / "stage2.yaml", data, tmp_path / "ddp", runs["all"], shard_rows=3,
                                 batch_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same kernels as the in-process store
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "chexfusion", "features", "--config", str(config)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes=2" in result.stdout
    assert file_bytes(tmp_path / "ddp") == file_bytes(store)


class ThreadRank:
    """An accelerate stand-in for one of ``world`` ranks run as threads (wait_for_everyone is a real barrier)."""

    def __init__(self, rank: int, world: int, barrier: threading.Barrier):
        self.process_index, self.num_processes, self.barrier = rank, world, barrier
        self.is_main_process = self.is_local_main_process = rank == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self):
        self.barrier.wait(timeout=120)

    def print(self, *args):
        pass


def test_ranks_write_disjoint_shards_and_the_result_equals_one_process(tmp_path, data, runs, store, monkeypatch):
    from chexfusion.feature_store import writer

    cfg = features_cfg(tmp_path / "two", runs["all"])
    barrier, errors, written = threading.Barrier(2), [], {}
    real_write = writer.write_shard_file

    def recording_write(table, path, row_group_rows):
        written[path.name] = threading.current_thread().name
        return real_write(table, path, row_group_rows)

    monkeypatch.setattr(writer, "write_shard_file", recording_write)

    def rank(r):
        try:
            build_store(cfg, splits_of(data), accelerator=ThreadRank(r, 2, barrier), progress=False)
        except Exception as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # shards of all splits counted in order: train 0-3 then val 0; rank r writes those with index % 2 == r
    assert written == {"part-train-00000.parquet": "rank0", "part-train-00001.parquet": "rank1",
                       "part-train-00002.parquet": "rank0", "part-train-00003.parquet": "rank1",
                       "part-val-00000.parquet": "rank0"}
    assert file_bytes(tmp_path / "two") == file_bytes(store)


# ---- stale stores ------------------------------------------------------------------------------------------


def test_store_from_another_checkpoint_is_refused_naming_the_mismatch(tmp_path, data, runs):
    run = make_run(tmp_path / "run", 0)
    cfg = features_cfg(tmp_path / "store", run)
    opened = FeatureStore(build_store(cfg, splits_of(data), progress=False))
    opened.check_matches(FeatureStore.expected_from_config(cfg, splits_of(data)))  # current: no error
    old = opened.manifest["backbones"]["shared"]["weights_sha256"]

    make_run(run, 7)  # stage 1 retrained in the same folder: new weights, new hash in run.json
    new = json.loads((run / "run.json").read_text())["weights_sha256"]
    with pytest.raises(UserError) as info:
        opened.check_matches(FeatureStore.expected_from_config(cfg, splits_of(data)))
    message = str(info.value)
    assert "\n" not in message and f"feature store {tmp_path / 'store'} is stale" in message
    assert f"backbone shared was made from weights {old[:12]}" in message and new[:12] in message
    assert "re-run chexfusion features" in message

    make_run(run, 0)  # the original weights again: only the pool differs now
    pooled = features_cfg(tmp_path / "store", run, pool=[1, 1])
    with pytest.raises(UserError, match="pool is null in the store, \\[1, 1\\] in the config"):
        opened.check_matches(FeatureStore.expected_from_config(pooled, splits_of(data)))

    write_csv(tmp_path / "val.csv", VAL_ROWS[:2], fpath=lambda d: str(data / "img" / f"{d}.jpg"))
    changed = {**splits_of(data), "val": (str(tmp_path / "val.csv"), str(data))}
    with pytest.raises(UserError, match="split 'val' was made from another version of"):
        opened.check_matches(FeatureStore.expected_from_config(cfg, changed))


def test_stage2_exits_2_with_one_line_on_a_stale_store(tmp_path, data, runs, run_cli):
    run = make_run(tmp_path / "run", 0)
    config = write_stage2_config(tmp_path / "stage2.yaml", data, tmp_path / "store", run)
    assert run_cli("features", "--config", config)[0] == 0
    make_run(run, 3)
    code, out, err = run_cli("stage2", "--config", config, f"output_dir={tmp_path / 'runs'}")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("chexfusion: error: feature store")
    assert "backbone shared was made from weights" in err


def test_features_rebuilds_a_store_made_from_other_settings(tmp_path, data, runs, run_cli):
    config = write_stage2_config(tmp_path / "stage2.yaml", data, tmp_path / "store", runs["all"])
    assert run_cli("features", "--config", config)[0] == 0
    code, out, err = run_cli("features", "--config", config, "features.dtype=float32")
    assert code == 0, err
    assert "dtype is float16 in the store, float32 in the config" in out + err
    assert FeatureStore(tmp_path / "store").manifest["dtype"] == "float32"
    code, out, _ = run_cli("features", "--config", config, "features.dtype=float32", "--verify")
    assert code == 0 and "is complete" in out


def test_a_store_written_with_sha256_records_still_verifies_and_is_not_rebuilt(tmp_path, data, runs, run_cli):
    """Stores written before shard checksums were XXH3 record ``sha256``: they stay valid, complete and current."""
    config = write_stage2_config(tmp_path / "stage2.yaml", data, tmp_path / "store", runs["all"])
    assert run_cli("features", "--config", config)[0] == 0
    store = tmp_path / "store"
    manifest = json.loads((store / "manifest.json").read_text())
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            del shard["checksum"]
            shard["sha256"] = sha256(store / shard["file"])
    (store / "manifest.json").write_text(json.dumps(manifest))
    before = file_bytes(store)
    FeatureStore(store).verify()
    code, out, err = run_cli("features", "--config", config, "--verify")
    assert code == 0 and "is complete" in out, err
    assert file_bytes(store) == before

    first = manifest["splits"]["train"]["shards"][0]
    damaged = bytearray((store / first["file"]).read_bytes())
    damaged[100] ^= 0xFF
    (store / first["file"]).write_bytes(bytes(damaged))
    with pytest.raises(UserError, match=f"shard {first['file']} differs from its checksum"):
        FeatureStore(store).verify()


def test_missing_or_damaged_store_and_bad_config_are_one_line_errors(tmp_path, data, runs, store, run_cli):
    with pytest.raises(UserError, match="no feature store at .*run chexfusion features"):
        FeatureStore(tmp_path / "nothing")
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in store.iterdir():
        if path.is_file():
            shutil.copyfile(path, copy / path.name)
    shard = copy / "part-val-00000.parquet"
    damaged = bytearray(shard.read_bytes())
    damaged[100] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match="shard part-val-00000.parquet differs from its checksum"):
        FeatureStore(copy).verify()
    with pytest.raises(UserError, match="has no split 'test'"):
        FeatureStore(copy).load_split("test")

    config = write_stage2_config(tmp_path / "stage2.yaml", data, tmp_path / "s", runs["all"])
    code, _, err = run_cli("features", "--config", config, "features.routing=sideways")
    assert code == 2 and err.count("\n") == 1 and "features.routing" in err
    code, _, err = run_cli("features", "--config", config, "features.routing=per_view")
    assert code == 2 and "features.frontal_backbone" in err


def test_unreadable_images_stop_the_run_or_are_skipped_and_counted(tmp_path, data, runs, run_cli):
    rows = VAL_ROWS + [("broken", "p7", "s7", "PA")]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    write_csv(tmp_path / "val.csv", rows,
              fpath=lambda d: str(tmp_path / "broken.jpg") if d == "broken" else str(data / "img" / f"{d}.jpg"))
    config = write_stage2_config(tmp_path / "stage2.yaml", data, tmp_path / "s", runs["all"])
    val_csv = f"data.val_csv={tmp_path / 'val.csv'}"
    code, _, err = run_cli("features", "--config", config, val_csv)
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and last.startswith("chexfusion: error: cannot read image") and "broken.jpg" in last
    code, out, err = run_cli("features", "--config", config, val_csv, "features.skip_bad_images=true")
    assert code == 0, err
    entry = FeatureStore(tmp_path / "s").manifest["splits"]["val"]
    assert entry["skipped"] == ["broken"] and entry["rows"] == 3 and entry["images_in_csv"] == 4
    assert "1 unreadable images skipped" in out + err


# ---- reading -----------------------------------------------------------------------------------------------


def test_in_memory_split_serves_whole_studies(store):
    split = FeatureStore(store).load_split("train")
    assert len(split) == 5 and split.num_images == 11 and len(split.chunks) > 1
    s3 = split.study(2)
    assert s3.study_id == "s3" and s3.features.shape == (4, 320, 2, 2)
    assert s3.views.tolist() == [VIEW_INDEX[v] for v in ("frontal", "frontal", "lateral", "unknown")]
    assert s3.dicom_ids == ["t06", "t07", "t05", "t04"] and s3.csv_rows.tolist() == [5, 6, 4, 3]
    assert split.study_index["s3"] == slice(4, 8)
    assert np.array_equal(s3.features.reshape(4, -1), split.features[4:8])
    assert np.array_equal(split.rows(3, 9), split.features[3:9])  # across row-group chunks


def test_streaming_yields_every_study_once_whole_with_bounded_buffers(store):
    opened = FeatureStore(store)
    split = opened.load_split("train")
    in_order = list(opened.iter_studies("train"))
    assert [s.study_id for s in in_order] == list(split.study_ids)
    for i, study in enumerate(in_order):
        assert np.array_equal(study.features, split.study(i).features) and study.dicom_ids == split.study(i).dicom_ids

    def shuffled(epoch):
        studies = list(opened.iter_studies("train", shuffle_buffer=2, seed=5, epoch=epoch))
        return [s.study_id for s in studies], studies

    order0, studies = shuffled(0)
    assert sorted(order0) == sorted(split.study_ids)  # every study exactly once
    for study in studies:  # and whole
        assert np.array_equal(study.features, split.study(list(split.study_ids).index(study.study_id)).features)
    stats = opened.last_stream_stats
    # row groups of at most two rows or one whole study (up to 4 images): at most 2 are decoded at once
    largest = int((split.study_stops - split.study_starts).max())
    assert stats.max_decoded_row_groups <= 2 and stats.max_decoded_rows <= 2 * max(2, largest)
    assert stats.max_buffered_studies == 2
    assert shuffled(0)[0] == order0  # deterministic for (seed, epoch)
    assert any(shuffled(e)[0] != order0 for e in (1, 2, 3))


def test_split_metadata_knows_every_study_and_image_without_the_maps(store):
    opened = FeatureStore(store)
    split, meta = opened.load_split("train"), opened.split_metadata("train")
    assert len(meta) == len(split) == 5 and meta.num_images == split.num_images == 11
    assert list(meta.study_ids) == list(split.study_ids)
    assert meta.study_starts.tolist() == split.study_starts.tolist()
    assert meta.study_stops.tolist() == split.study_stops.tolist()
    assert meta.views.tolist() == split.views.tolist()
    assert meta.csv_rows.tolist() == split.meta["csv_row"].tolist()
    assert meta.dicom_ids.to_pylist() == split.meta["dicom_id"].tolist()
    # a streamed study names its row in the metadata, in store order and shuffled alike
    assert [s.index for s in opened.iter_studies("train")] == list(range(5))
    for study in opened.iter_studies("train", shuffle_buffer=2, seed=1):
        a, b = meta.study_starts[study.index], meta.study_stops[study.index]
        assert meta.study_ids[study.index] == study.study_id and study.csv_rows.tolist() == meta.csv_rows[a:b].tolist()
    assert split.study(2).index == 2


def test_a_finished_stream_frees_its_row_groups_without_the_garbage_collector(store):
    """Stage 2 starts a stream every epoch: a finished one must not hold its decoded row groups until the
    garbage collector happens to run (a reference cycle would). Measured on a second stream: the first may
    leave pyarrow's one-time state allocated (CI once measured two small row groups' worth more in the full
    suite, never alone)."""
    opened = FeatureStore(store)
    assert sum(1 for _ in opened.iter_studies("train", shuffle_buffer=2, seed=0)) == 5
    gc.collect()
    gc.disable()
    try:
        before = pa.total_allocated_bytes()
        assert sum(1 for _ in opened.iter_studies("train", shuffle_buffer=2, seed=0)) == 5
        assert pa.total_allocated_bytes() <= before
    finally:
        gc.enable()
