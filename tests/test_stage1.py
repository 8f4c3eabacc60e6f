"""Stage 1 end to end on the tiny synthetic data: run folder, reload, resume, config safety, multi-process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pipeline
import pytest
import torch

from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.io import file_sha256
from chexfusion.stage1.model import load_stage1_run


def test_run_folder_is_self_contained(tiny_stage1, tiny_data):
    for name in ("model.safetensors", "config.yaml", "run.json", "metrics.json", "history.jsonl"):
        assert (tiny_stage1 / name).is_file(), name
    assert not (tiny_stage1 / "checkpoint").exists()
    metrics = json.loads((tiny_stage1 / "metrics.json").read_text())
    classes = read_cxr_lt(tiny_data / "train.csv").classes
    assert metrics["classes"] == classes
    for split in ("validation", "test"):
        assert set(metrics[split]) >= {"mAP", "mAUROC", "head_mAP", "medium_mAP", "tail_mAP", "per_class"}

    moved = tiny_stage1.parent / "moved-elsewhere"
    shutil.copytree(tiny_stage1, moved)
    run = load_stage1_run(moved)
    assert run.classes == classes
    x = torch.zeros(2, 3, pipeline.IMAGE_SIZE, pipeline.IMAGE_SIZE)
    assert run.model(x).shape == (2, len(classes))
    assert tuple(run.model.forward_features(x).shape[1:]) == tuple(run.info["feature_shape"])


def test_finished_run_is_not_retrained(tiny_stage1, tiny_data, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    before = file_sha256(tiny_stage1 / "model.safetensors")
    pipeline.train_stage1(tiny_data, tiny_stage1.parent)
    assert "complete" in capsys.readouterr().out
    assert file_sha256(tiny_stage1 / "model.safetensors") == before


def test_changed_config_in_an_existing_run_folder_is_refused(tiny_stage1, tiny_data, repo_root, monkeypatch,
                                                             run_cli):
    monkeypatch.chdir(repo_root)
    overrides = pipeline.stage1_overrides(tiny_data, tiny_stage1.parent, "tiny", **{"train.lr": 0.5})
    code, _, err = run_cli("stage1", "--config", "stage1/config.yaml", *overrides)
    assert code == 2
    assert "train.lr" in err and len(err.strip().splitlines()) == 1


def test_unknown_config_key_is_one_line_exit_2(run_cli, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    code, _, err = run_cli("stage1", "train.learning_rate=1")
    assert code == 2 and "train.learning_rate" in err and "Traceback" not in err


def _stage1_subprocess(args, kill_at_step=None, cwd=None):
    launcher = ["-m", "chexfusion"] if kill_at_step is None else ["tests/kill_at_step.py", str(kill_at_step)]
    return subprocess.run([sys.executable, *launcher, "stage1", "--config", "stage1/config.yaml", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_result(tiny_data, tmp_path, repo_root):
    """kill -9 in the middle of epoch 2, re-run the same command: same weights and metrics as an uninterrupted run."""
    extra = {"train.epochs": 2, "train.checkpoint_every_steps": 2, "train.max_steps_per_epoch": 4, "seed": 5}
    whole = _stage1_subprocess(pipeline.stage1_overrides(tiny_data, tmp_path, "whole", **extra), cwd=repo_root)
    assert whole.returncode == 0, whole.stderr[-2000:]
    args = pipeline.stage1_overrides(tiny_data, tmp_path, "killed", **extra)
    killed = _stage1_subprocess(args, kill_at_step=7, cwd=repo_root)
    assert killed.returncode == -9
    assert (tmp_path / "killed" / "checkpoint" / "progress.json").is_file()
    resumed = _stage1_subprocess(args, cwd=repo_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    # hashes, not bytes: pytest's diff of two multi-MB byte strings runs for hours
    whole, killed = (file_sha256(tmp_path / name / "model.safetensors") for name in ("whole", "killed"))
    assert whole == killed
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert a["validation"] == b["validation"] and a["test"] == b["test"]
    # every epoch, not only the best one (which may be epoch 1, before the kill), matches the uninterrupted run
    assert _history_without_timings(tmp_path / "killed") == _history_without_timings(tmp_path / "whole")
    assert [h["epoch"] for h in _history_without_timings(tmp_path / "killed")] == [1, 2]


def _history_without_timings(run_dir):
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")} for line in lines]


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tiny_data, tmp_path, repo_root):
    extra = {"train.epochs": 1, "train.max_steps_per_epoch": 2, "train.batch_size": 8}
    # torchrun-style launch (accelerate's --cpu flag would need MPI); the Accelerator picks gloo on a CPU machine
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "chexfusion", "stage1",
           "--config", "stage1/config.yaml", *pipeline.stage1_overrides(tiny_data, tmp_path, "ddp", **extra)]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes=2" in result.stdout
    run = load_stage1_run(tmp_path / "ddp")
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    # every validation image was scored exactly once across the two processes
    n_val = len(read_cxr_lt(tiny_data / "development.csv"))
    assert metrics["validation"]["n_images"] == n_val
    assert run.classes == metrics["classes"]


def test_unreadable_images_are_skipped_and_counted_with_skip_bad_images(tiny_data, tmp_path, repo_root,
                                                                         monkeypatch, run_cli):
    """data.skip_bad_images=true: stage 1 trains past broken files and says how many it left out of each split."""
    monkeypatch.chdir(repo_root)
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    train, val = read_cxr_lt(data / "train.csv"), read_cxr_lt(data / "development.csv")
    for path in train.image_paths(data)[:20] + val.image_paths(data)[:1]:  # a third of the first batch or so
        Path(path).write_bytes(b"\xff\xd8\xff not a jpeg")
    code, out, err = run_cli("stage1", "--config", "stage1/config.yaml",
                             *pipeline.stage1_overrides(data, tmp_path / "runs", "stops", **{"data.test_csv": ""}))
    assert code == 2 and "chexfusion: error: cannot read image" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "stops" / "model.safetensors").exists()
    code, out, err = run_cli("stage1", "--config", "stage1/config.yaml", "data.skip_bad_images=true",
                             *pipeline.stage1_overrides(data, tmp_path / "runs", "skips", **{"data.test_csv": ""}))
    assert code == 0, err
    metrics = json.loads((tmp_path / "runs" / "skips" / "metrics.json").read_text())
    assert metrics["validation"]["skipped_images"] == 1
    assert 0 < metrics["skipped_train_images"] <= 20
    assert f"{metrics['skipped_train_images']} in training, 1 in validation" in out
