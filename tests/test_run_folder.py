"""What defines a run's weights is recorded inside its weights file and checked against run.json and config.yaml
on load; one file mode for everything a run writes."""

import json
import os
import shutil

import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import chexfusion
from chexfusion.errors import UserError
from chexfusion.io import file_sha256
from chexfusion.run_folder import METADATA_KEY


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _edit_info(run, **changes):
    info = json.loads((run / "run.json").read_text())
    info.update(changes)
    (run / "run.json").write_text(json.dumps(info))


def test_the_weights_file_records_classes_preprocessing_backbone_and_head(tiny_stage1):
    info = json.loads((tiny_stage1 / "run.json").read_text())
    with safe_open(str(tiny_stage1 / "model.safetensors"), framework="pt") as handle:
        record = json.loads(handle.metadata()[METADATA_KEY])
    assert record["classes"] == info["classes"] and record["preprocess"] == info["preprocess"]
    assert record["backbone"] == info["backbone"] and record["model"]["head"] == "ml_decoder"
    assert file_sha256(tiny_stage1 / "model.safetensors") == info["weights_sha256"]  # the hash covers the record


def _reordered(info):
    order = list(range(len(info["classes"])))[::-1]
    return {"classes": [info["classes"][i] for i in order],
            "train_prevalence": [info["train_prevalence"][i] for i in order]}


@pytest.mark.parametrize("field, change", [
    ("classes", _reordered),
    ("preprocess.image_size", lambda info: {"preprocess": {**info["preprocess"], "image_size": 96}}),
    ("backbone", lambda info: {"backbone": "resnet18"}),
    ("views", lambda info: {"views": "frontal"}),
])
def test_a_run_json_disagreeing_with_its_weights_is_refused_naming_the_field(tiny_stage1, tmp_path, field, change):
    run = _copy(tiny_stage1, tmp_path)
    _edit_info(run, **change(json.loads((run / "run.json").read_text())))
    with pytest.raises(UserError, match=f"run.json: '{field}' is not what model.safetensors was trained with"):
        chexfusion.load(run, device="cpu")


def test_a_config_whose_head_was_edited_is_refused(tiny_stage1, tmp_path):
    """decoder_heads changes no tensor shape, so only the record catches it."""
    run = _copy(tiny_stage1, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["decoder_heads"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="config.yaml: 'model.decoder_heads' is not what model.safetensors"):
        chexfusion.load(run, device="cpu")


def test_a_stage2_run_json_with_another_view_routing_is_refused(tiny_stage2, tmp_path, run_cli, tiny_data):
    run = _copy(tiny_stage2, tmp_path)
    _edit_info(run, unknown_view="lateral")
    code, _, err = run_cli("predict", "--model", run, "--csv", tiny_data / "test.csv", "--image-root", tiny_data,
                           "--out", tmp_path / "p.csv")
    assert code == 2 and err.count("\n") == 1 and "'unknown_view' is not what" in err
    assert not (tmp_path / "p.csv").exists()


def test_a_run_saved_before_the_record_existed_still_loads(tiny_stage1, tmp_path):
    run = _copy(tiny_stage1, tmp_path)
    save_file(load_file(str(run / "model.safetensors")), str(run / "model.safetensors"))  # no metadata
    _edit_info(run, weights_sha256=file_sha256(run / "model.safetensors"))
    model = chexfusion.load(run, device="cpu")
    assert model.classes == json.loads((tiny_stage1 / "run.json").read_text())["classes"]


def test_every_file_of_a_run_has_the_same_mode(tiny_stage2):
    """model.safetensors was 0600 (safetensors makes its own file), everything else 0644."""
    modes = {path.relative_to(tiny_stage2): oct(path.stat().st_mode & 0o777)
             for path in tiny_stage2.rglob("*") if path.is_file()}
    mask = os.umask(0)
    os.umask(mask)
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes
