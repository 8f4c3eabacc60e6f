"""benchmarks/gpu_check.py, the parts a CPU can check: the refusal without CUDA, the memory figures' arithmetic
(the same as docs/scale.md's), the bare loops and the loader-wait counter on a tiny model, and the whole sequence
run on the CPU with the demo configs (wiring and the JSON's shape; no figure is asserted against a target)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pipeline
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_one_line_and_exit_0():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]


def test_refusal_is_only_for_cuda(gpu_check, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in gpu_check.no_cuda_line("cuda")
    assert gpu_check.no_cuda_line("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.no_cuda_line("cuda") is None


def test_memory_arithmetic(gpu_check):
    from support.memory_plan import extraction_bytes, stage1_training_bytes

    # 16 bytes per trainable parameter + activations per image x batch, halved under autocast
    assert stage1_training_bytes(1000, 200.0, 4, autocast=False) == 16_000 + 800
    assert stage1_training_bytes(1000, 200.0, 4, autocast=True) == 16_000 + 400
    assert extraction_bytes(10, 5.0, 3) == 40 + 15


def test_planned_memory_is_the_scale_plan_figure(gpu_check):
    """The check compares with the figures docs/scale.md prints for the full recipe."""
    from chexfusion.config import load_config
    from chexfusion.stage1.config import Stage1Config
    from chexfusion.stage2.config import Stage2Config

    s1 = load_config(Stage1Config, REPO / "stage1" / "cxr-lt.yaml")
    s2 = load_config(Stage2Config, REPO / "stage2" / "cxr-lt.yaml")
    planned = gpu_check.planned_memory(s1, s2, 40)
    doc = (REPO / "docs" / "scale.md").read_text()
    stage1_doc = float(re.search(r"about ([\d.]+) GB with fp16 autocast", doc).group(1))
    extract_doc = float(re.search(r"feature extraction, batch \d+ \| at least ([\d.]+) GB", doc).group(1))
    assert planned["stage1_bytes"] / 1e9 == pytest.approx(stage1_doc, rel=0.01)
    assert planned["extraction_bytes"] / 1e9 == pytest.approx(extract_doc, rel=0.01)


def tiny_stage1_config(**train):
    from chexfusion.config import load_config
    from chexfusion.stage1.config import Stage1Config

    return load_config(Stage1Config, REPO / "stage1" / "config.yaml",
                       ["data.image_size=32", "model.decoder_dim=32", "model.decoder_ff_dim=64",
                        "model.decoder_heads=4", "train.batch_size=2", *[f"train.{k}={v}" for k, v in train.items()]])


@pytest.mark.parametrize("channels_last", [False, True])
def test_bare_loops_run_on_cpu(gpu_check, channels_last):
    cfg = tiny_stage1_config(channels_last=str(channels_last).lower())
    assert gpu_check.autocast_dtype(cfg.train.mixed_precision, "cpu") is None  # auto: no autocast on CPU
    train = gpu_check.bare_train_rate(cfg, 5, "cpu", steps=2)
    forward = gpu_check.bare_forward_rate(cfg, 5, "cpu", batch=2, batches=2)
    assert math.isfinite(train) and train > 0 and math.isfinite(forward) and forward > 0


def test_autocast_dtype_follows_accelerate(gpu_check):
    autocast_dtype = gpu_check.autocast_dtype
    assert autocast_dtype("auto", "cuda") is torch.float16
    assert autocast_dtype("bf16", "cuda") is torch.bfloat16
    assert autocast_dtype("no", "cuda") is None


class Counted(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return i


class Other(Counted):
    pass


def test_loader_waits_count_the_training_set_only(gpu_check):
    next_before = torch.utils.data.dataloader._BaseDataLoaderIter.__next__
    with gpu_check.LoaderWaits(Other) as waits:
        assert list(torch.utils.data.DataLoader(Counted(), batch_size=2)) != []
        assert waits.batches == 0
        assert len(list(torch.utils.data.DataLoader(Other(), batch_size=2))) == 3
    assert waits.batches == 4  # three batches and the call that ends the iteration
    assert waits.seconds > 0
    assert torch.utils.data.dataloader._BaseDataLoaderIter.__next__ is next_before


def test_report_targets(gpu_check):
    s1 = tiny_stage1_config()
    stage1 = {"images_per_s": 95.0, "stall_share": 0.02, "peak_bytes": 12e9}
    extraction = {"images_per_s": 180.0, "peak_bytes": 5e9}
    planned = {"stage1_bytes": 15.5e9, "extraction_bytes": 6.66e9}
    good = gpu_check.report("H100", stage1, 100.0, extraction, 190.0, planned, 1e-3, s1)
    assert good["stage1_ratio"] == 0.95 and good["extraction_ratio"] == 0.947 and good["meets_target"] is True
    assert good["stage1_peak_memory_gb"] == 12.0 and good["stage1_planned_memory_gb"] == 15.5
    slow = gpu_check.report("H100", stage1, 200.0, extraction, 190.0, planned, 1e-3, s1)
    assert slow["stage1_ratio"] == 0.475 and slow["meets_target"] is False
    apart = gpu_check.report("H100", stage1, 100.0, extraction, 190.0, planned, 0.05, s1)
    assert apart["predictions_agree"] is False and apart["meets_target"] is False


def test_whole_check_on_cpu(gpu_check, tiny_data, tmp_path, capsys, monkeypatch):
    """Every step of the check, with the demo configs on tiny data: the last line is the JSON the GPU run gives."""
    monkeypatch.chdir(REPO)
    small1 = ["model.decoder_dim=32", "model.decoder_ff_dim=64", "model.decoder_heads=4", "train.batch_size=8",
              f"data.image_size={pipeline.IMAGE_SIZE}"]
    small2 = ["model.dim=32", "model.ff_dim=64", "model.heads=4", "model.decoder_ff_dim=64", "model.decoder_heads=4",
              "train.batch_size=8"]
    argv = ["--device", "cpu", "--data", str(tiny_data), "--work", str(tmp_path / "work"), "--steps", "1",
            "--predict-studies", "3", "--stage1-config", "stage1/config.yaml", "--stage2-config", "stage2/config.yaml"]
    argv += [a for o in small1 for a in ("--stage1-override", o)]
    argv += [a for o in small2 for a in ("--stage2-override", o)]
    result = gpu_check.main(argv)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(result))
    assert last["device"] == "cpu" and last["image_size"] == pipeline.IMAGE_SIZE and last["batch_size"] == 8
    for key in ("stage1_images_per_s", "stage1_bare_images_per_s", "extraction_images_per_s",
                "extraction_bare_images_per_s"):
        assert last[key] > 0, key
    assert 0 < last["loader_stall_share"] <= 1  # the demo decodes in the main process (num_workers 0): it waits
    assert last["stage1_peak_memory_gb"] is None and last["stage1_planned_memory_gb"] > 0  # no CUDA, no peak
    assert last["prediction_max_abs_diff"] == 0.0 and last["predictions_agree"] is True  # CPU against itself
    assert isinstance(last["meets_target"], bool)
