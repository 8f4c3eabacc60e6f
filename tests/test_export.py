"""Run folders as Hugging Face model repositories: the model card, export, loading by Hub id, refusals."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

import chexfusion
from chexfusion.errors import UserError


def test_a_finished_run_is_a_model_repository_with_a_card(tiny_stage2):
    card = (tiny_stage2 / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: chexfusion")
    assert "synthetic radiographs" in card and "| test |" in card and "chance mAP" in card
    config = json.loads((tiny_stage2 / "config.json").read_text())
    assert config["kind"] == "stage2" and config["config"]["model"]["dim"] == 32


def test_export_copies_what_loading_needs_and_predicts_the_same(tiny_stage2, tiny_data, run_cli, tmp_path):
    out = tmp_path / "exported"
    code, stdout, _ = run_cli("export", "--model", tiny_stage2, "--out", out)
    assert code == 0 and "huggingface-cli upload" in stdout
    assert not (out / "checkpoint").exists() and (out / "backbones" / "shared" / "model.safetensors").is_file()
    original = chexfusion.load(tiny_stage2, device="cpu").predict_csv(tiny_data / "test.csv", tiny_data)
    copied = chexfusion.load(out, device="cpu").predict_csv(tiny_data / "test.csv", tiny_data)
    np.testing.assert_allclose(copied.iloc[:, 2:].to_numpy(), original.iloc[:, 2:].to_numpy(), atol=1e-6)
    code, _, err = run_cli("export", "--model", tiny_stage2, "--out", out)
    assert code == 2 and "not an empty folder" in err


def test_a_hub_id_loads_from_the_local_cache_only(tiny_stage2, tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--chexfusion--demo" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_stage2, snapshot, ignore=shutil.ignore_patterns("checkpoint"))
    (cache / "models--chexfusion--demo" / "refs").mkdir()
    (cache / "models--chexfusion--demo" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = chexfusion.load("chexfusion/demo", device="cpu")
    assert model.path == snapshot and model.kind == "stage2"
    with pytest.raises(UserError, match="neither a local folder nor in the Hugging Face cache.*hf download.*"
                                         "--allow-network"):
        chexfusion.load("chexfusion/absent", device="cpu")


def _rehash(run):
    info = json.loads((run / "run.json").read_text())
    info["weights_sha256"] = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    (run / "run.json").write_text(json.dumps(info))


def test_a_folder_without_weights_or_with_a_pickle_is_a_one_line_error(tiny_stage1, tmp_path):
    run = shutil.copytree(tiny_stage1, tmp_path / "run")
    (run / "model.safetensors").unlink()
    with pytest.raises(UserError, match="weights file not found"):
        chexfusion.load(run, device="cpu")
    torch.save({"weights": torch.zeros(2)}, run / "model.safetensors")  # a pickle under the weights' name
    with pytest.raises(UserError, match="does not match the hash"):
        chexfusion.load(run, device="cpu")
    _rehash(run)  # even with a matching hash recorded, it is never unpickled
    with pytest.raises(UserError, match="not a readable safetensors file"):
        chexfusion.load(run, device="cpu")
