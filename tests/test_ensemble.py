"""``chexfusion ensemble``: a run folder that predicts the mean of its members' probabilities (or, per class, of the
members that scored best on validation), taken by predict and the Python API as any run."""

import json
import shutil

import numpy as np
import pytest

import chexfusion
from chexfusion.ensemble import make_ensemble
from chexfusion.errors import UserError


@pytest.fixture(scope="module")
def pair(tiny_stage1, tiny_stage2, tmp_path_factory):
    """A stage-1 and a stage-2 run with the same classes, and their ensemble."""
    out = tmp_path_factory.mktemp("ensemble") / "mean"
    make_ensemble([tiny_stage1, tiny_stage2], out)
    return tiny_stage1, tiny_stage2, out


def test_predictions_are_the_mean_of_the_members(pair, tiny_data):
    first, second, ensemble = pair
    frames = [chexfusion.load(p, "cpu").predict_csv(tiny_data / "test.csv", tiny_data)
              for p in (first, second, ensemble)]
    assert list(frames[2]["dicom_id"]) == list(frames[0]["dicom_id"]) == list(frames[1]["dicom_id"])
    classes = chexfusion.load(ensemble, "cpu").classes
    mean = (frames[0][classes].to_numpy() + frames[1][classes].to_numpy()) / 2
    assert np.abs(frames[2][classes].to_numpy() - mean).max() < 1e-6


def test_one_study_is_the_mean_of_the_members(pair, tiny_data):
    import pandas as pd

    first, second, ensemble = pair
    table = pd.read_csv(tiny_data / "test.csv")
    study = table[table["study_id"] == table["study_id"].iloc[0]]
    images = [tiny_data / p for p in study["fpath"]]
    answers = [chexfusion.load(p, "cpu").predict_study(images) for p in (first, second, ensemble)]
    for name, p in answers[2].items():
        assert p == pytest.approx((answers[0][name] + answers[1][name]) / 2, abs=1e-6)


def test_per_class_choice_uses_the_members_it_names(pair, tiny_data, tmp_path):
    first, second, _ = pair
    out = tmp_path / "per-class"
    info = make_ensemble([first, second], out, (tiny_data / "development.csv", tiny_data, "cpu"))
    assert info["combine"] == "per_class" and set(info["choice"]) == set(info["classes"])
    frames = [chexfusion.load(p, "cpu").predict_csv(tiny_data / "test.csv", tiny_data) for p in (first, second, out)]
    for name, members in info["choice"].items():
        expected = np.mean([frames[i][name].to_numpy() for i in members], axis=0)
        assert np.abs(frames[2][name].to_numpy() - expected).max() < 1e-6
    assert json.loads((out / "run.json").read_text())["validation_AP"].keys() == info["choice"].keys()


def test_the_command_writes_a_folder_predict_takes(pair, tiny_data, tmp_path, run_cli):
    first, second, _ = pair
    code, out, err = run_cli("ensemble", "--runs", f"{first},{second}", "--out", tmp_path / "ens")
    assert code == 0, err
    code, _, err = run_cli("predict", "--model", tmp_path / "ens", "--csv", tiny_data / "test.csv",
                           "--image-root", tiny_data, "--out", tmp_path / "pred.csv")
    assert code == 0, err
    assert (tmp_path / "pred.csv").is_file()


def test_bad_requests_are_one_line_errors(pair, tmp_path, run_cli):
    first, second, ensemble = pair
    assert run_cli("ensemble", "--runs", str(first), "--out", tmp_path / "one")[0] == 2
    code, _, err = run_cli("ensemble", "--runs", f"{first},{second}", "--out", ensemble)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    other = tmp_path / "reordered"
    shutil.copytree(first, other)
    info = json.loads((other / "run.json").read_text())
    info["classes"] = info["classes"][::-1]
    (other / "run.json").write_text(json.dumps(info))
    code, _, err = run_cli("ensemble", "--runs", f"{first},{other}", "--out", tmp_path / "mixed")
    assert code == 2 and "classes differ" in err and not (tmp_path / "mixed").exists()
    code, _, err = run_cli("ensemble", "--runs", f"{first},{second}", "--out", tmp_path / "pc", "--per-class")
    assert code == 2 and "--val-csv" in err


def test_a_damaged_ensemble_is_refused_before_any_member_loads(pair, tmp_path):
    _, _, ensemble = pair
    copy = tmp_path / "damaged"
    shutil.copytree(ensemble, copy)
    info = json.loads((copy / "run.json").read_text())
    info["members"][1]["path"] = "../elsewhere"
    (copy / "run.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="must be a folder inside the run"):
        chexfusion.load(copy, "cpu")
    info["members"][1]["path"] = "members/1"
    info["combine"] = "per_class"
    (copy / "run.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="no valid member list"):
        chexfusion.load(copy, "cpu")


def test_the_web_demo_and_calibrate_take_an_ensemble(pair, tiny_data, tmp_path, run_cli):
    from chexfusion.inference import load_predictor
    from chexfusion.serve.engine import StudyEngine
    from chexfusion.serve.limits import Rejected, ServeLimits
    from chexfusion.serve.multipart import UploadedFile

    first, second, ensemble = pair
    copy = tmp_path / "ens"
    shutil.copytree(ensemble, copy)
    engine = StudyEngine(load_predictor(copy, "cpu"), ServeLimits(), "ens")
    files = sorted((tiny_data / "files").rglob("*.jpg"))[:2]
    images = engine.prepare([UploadedFile(f.name, f.read_bytes()) for f in files], ["auto", "auto"])
    result = engine.predict(images)
    assert result.heatmaps.shape[:2] == (len(engine.classes), len(result.used))  # one averaged map per class
    with pytest.raises(Rejected, match="one of the ensemble's members"):
        engine.predict(images, method="gradcam")
    code, out, err = run_cli("calibrate", "--model", copy, "--csv", tiny_data / "development.csv",
                             "--image-root", tiny_data)
    assert code == 0, err
    assert (copy / "calibration.json").is_file() and chexfusion.load(copy, "cpu").calibrated
