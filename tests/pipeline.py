"""A tiny end-to-end pipeline (synthetic data -> stage 1 -> feature store -> stage 2) for the tests.

Small enough for a CPU test run (about 120 studies at 64 px, one or two epochs),
built once per test session by the fixtures in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

from chexfusion.cli import main

STUDIES, IMAGE_SIZE, SEED = 120, 64, 3
# A store in small shards and row groups: the training split is several shards of several row groups, as a store
# larger than memory would be (stage-2 streaming and store damage tests).
SMALL_GROUPS = {"features.row_group_rows": 8, "features.shard_rows": 32}


def cli(*argv) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, f"chexfusion {' '.join(map(str, argv))} exited {code}"


def make_data(out: Path) -> Path:
    cli("synth", "--out", out, "--studies", STUDIES, "--image-size", IMAGE_SIZE, "--seed", SEED)
    return out


def data_overrides(data: Path) -> list[str]:
    return [f"data.image_root={data}", f"data.train_csv={data / 'train.csv'}",
            f"data.val_csv={data / 'development.csv'}", f"data.test_csv={data / 'test.csv'}"]


def stage1_overrides(data: Path, runs: Path, name: str = "tiny", **extra) -> list[str]:
    values = {"name": name, "output_dir": runs, "data.image_size": IMAGE_SIZE, "model.decoder_dim": 32,
              "model.decoder_ff_dim": 64, "model.decoder_heads": 4, "train.epochs": 1, "train.batch_size": 16,
              "train.lr": 2e-3, **extra}
    return data_overrides(data) + [f"{k}={v}" for k, v in values.items()]


def stage2_overrides(data: Path, runs: Path, store: Path, backbone: Path, name: str = "tiny", **extra) -> list[str]:
    values = {"name": name, "output_dir": runs, "features.store": store, "features.shared_backbone": backbone,
              "model.dim": 32, "model.ff_dim": 64, "model.heads": 4, "model.decoder_ff_dim": 64,
              "model.decoder_heads": 4, "train.epochs": 2, "train.batch_size": 8, **extra}
    return data_overrides(data) + [f"{k}={v}" for k, v in values.items()]


def train_stage1(data: Path, runs: Path, **extra) -> Path:
    name = extra.pop("name", "tiny")
    cli("stage1", "--config", "stage1/config.yaml", *stage1_overrides(data, runs, name, **extra))
    return runs / name


def build_features(data: Path, runs: Path, store: Path, backbone: Path, **extra) -> Path:
    cli("features", "--config", "stage2/config.yaml", *stage2_overrides(data, runs, store, backbone, **extra))
    return store


def train_stage2(data: Path, runs: Path, store: Path, backbone: Path, **extra) -> Path:
    name = extra.pop("name", "tiny")
    cli("stage2", "--config", "stage2/config.yaml", *stage2_overrides(data, runs, store, backbone, name, **extra))
    return runs / name
