"""Stage 2, predict and evaluate end to end on the tiny synthetic data."""

import json
import shutil

import numpy as np
import pandas as pd
import pipeline
import pytest

from chexfusion.io import file_sha256
from chexfusion.predictions import read_predictions


def test_stage2_run_folder(tiny_stage2, tiny_stage1):
    for name in ("model.safetensors", "config.yaml", "run.json", "metrics.json", "history.jsonl"):
        assert (tiny_stage2 / name).is_file(), name
    info = json.loads((tiny_stage2 / "run.json").read_text())
    assert info["kind"] == "stage2" and info["routing"] == "shared"
    # the backbone it sits on travels with it, byte for byte
    copied = tiny_stage2 / info["backbones"]["shared"]["path"] / "model.safetensors"
    assert file_sha256(copied) == file_sha256(tiny_stage1 / "model.safetensors")
    metrics = json.loads((tiny_stage2 / "metrics.json").read_text())
    assert metrics["validation"]["level"] == "image"
    assert "study_level" in metrics["validation"]
    assert "validation" in metrics["stage1_baseline"]


def test_predict_then_evaluate_reproduces_stage2_test_metrics(tiny_stage2, tiny_data, tmp_path, run_cli):
    pred = tmp_path / "pred.csv"
    code, out, err = run_cli("predict", "--model", tiny_stage2, "--csv", tiny_data / "test.csv",
                             "--image-root", tiny_data, "--out", pred)
    assert code == 0, err
    frame, classes, probs = read_predictions(pred)
    labels = pd.read_csv(tiny_data / "test.csv", dtype=str)
    assert list(frame["dicom_id"]) == list(labels["dicom_id"])  # one row per input image, input order
    assert classes == json.loads((tiny_stage2 / "run.json").read_text())["classes"]
    # every image of a study carries the study's prediction
    for _, rows in frame.groupby("study_id").indices.items():
        assert np.allclose(probs[rows], probs[rows[0]])

    code, out, err = run_cli("evaluate", "--pred", pred, "--labels", tiny_data / "test.csv",
                             "--train-labels", tiny_data / "train.csv", "--out", tmp_path / "eval")
    assert code == 0, err
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained = json.loads((tiny_stage2 / "metrics.json").read_text())["test"]
    for key in ("mAP", "mAUROC", "mF1", "head_mAP", "medium_mAP", "tail_mAP"):
        if trained[key] is None:
            assert evaluated[key] is None
        else:
            assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key


def test_predictions_do_not_depend_on_csv_order(tiny_stage2, tiny_data, tmp_path, run_cli):
    labels = pd.read_csv(tiny_data / "test.csv", dtype=str, keep_default_na=False)
    shuffled = labels.sample(frac=1.0, random_state=1)
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    for name, csv in (("a.csv", tiny_data / "test.csv"), ("b.csv", tmp_path / "shuffled.csv")):
        code, _, err = run_cli("predict", "--model", tiny_stage2, "--csv", csv, "--image-root", tiny_data,
                               "--out", tmp_path / name, "--batch-size", "7" if name == "a.csv" else "32")
        assert code == 0, err
    a, _, pa = read_predictions(tmp_path / "a.csv")
    b, _, pb = read_predictions(tmp_path / "b.csv")
    order = {d: i for i, d in enumerate(b["dicom_id"])}
    np.testing.assert_allclose(pa, pb[[order[d] for d in a["dicom_id"]]], atol=1e-6)


def test_missing_image_is_one_line_or_skipped_and_counted(tiny_stage2, tiny_data, tmp_path, run_cli):
    labels = pd.read_csv(tiny_data / "test.csv", dtype=str, keep_default_na=False)
    labels.loc[0, "fpath"] = "files/nowhere/missing.jpg"
    labels.to_csv(tmp_path / "broken.csv", index=False)
    code, _, err = run_cli("predict", "--model", tiny_stage2, "--csv", tmp_path / "broken.csv",
                           "--image-root", tiny_data, "--out", tmp_path / "p.csv")
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("chexfusion: error")]
    assert len(errors) == 1 and "missing.jpg" in errors[0]
    assert err.rstrip().endswith(errors[0])
    code, out, err = run_cli("predict", "--model", tiny_stage2, "--csv", tmp_path / "broken.csv",
                             "--image-root", tiny_data, "--out", tmp_path / "p.csv", "--skip-bad-images")
    assert code == 0 and "skipped 1" in err
    frame, _, _ = read_predictions(tmp_path / "p.csv")
    assert len(frame) == len(labels) - 1 and labels.loc[0, "dicom_id"] not in set(frame["dicom_id"])


def test_stage1_run_predicts_per_image_and_aggregates(tiny_stage1, tiny_data, tmp_path, run_cli):
    for aggregate in (None, "max"):
        args = ["predict", "--model", tiny_stage1, "--csv", tiny_data / "test.csv", "--image-root", tiny_data,
                "--out", tmp_path / f"{aggregate}.csv"]
        code, _, err = run_cli(*args, *(["--aggregate", aggregate] if aggregate else []))
        assert code == 0, err
    per_image, _, p = read_predictions(tmp_path / "None.csv")
    study_max, _, m = read_predictions(tmp_path / "max.csv")
    for _, rows in per_image.groupby("study_id").indices.items():
        np.testing.assert_allclose(m[rows], np.broadcast_to(p[rows].max(axis=0), m[rows].shape), atol=1e-7)


def test_stage2_refuses_a_store_from_another_backbone(tiny_stage2, tiny_stage1, tiny_store, tiny_data, tmp_path,
                                                       repo_root, monkeypatch, run_cli):
    """Retrained stage 1 (other weights) + the old store -> exit 2 naming the backbone mismatch."""
    monkeypatch.chdir(repo_root)
    other = tmp_path / "other-stage1"
    shutil.copytree(tiny_stage1, other)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(other / "model.safetensors"))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()},
              str(other / "model.safetensors"))
    info = json.loads((other / "run.json").read_text())
    info["weights_sha256"] = file_sha256(other / "model.safetensors")
    (other / "run.json").write_text(json.dumps(info))
    overrides = pipeline.stage2_overrides(tiny_data, tmp_path, tiny_store, other, "stale")
    code, _, err = run_cli("stage2", "--config", "stage2/config.yaml", *overrides)
    assert code == 2, err
    assert "stale" in err and "backbone" in err and len(err.strip().splitlines()) == 1


def test_compare_stage2_against_the_stage1_baseline_from_predict(tiny_stage2, tiny_stage1, tiny_data, tmp_path,
                                                                 run_cli):
    """compare reads what predict writes: two real models' predictions, tested on the same studies."""
    for name, model, extra in (("stage2", tiny_stage2, []), ("stage1", tiny_stage1, ["--aggregate", "max"])):
        code, _, err = run_cli("predict", "--model", model, "--csv", tiny_data / "test.csv", "--image-root",
                               tiny_data, "--out", tmp_path / f"{name}.csv", *extra)
        assert code == 0, err
    code, out, err = run_cli("compare", "--pred", tmp_path / "stage2.csv", "--pred", tmp_path / "stage1.csv",
                             "--labels", tiny_data / "test.csv", "--train-labels", tiny_data / "train.csv",
                             "--bootstrap", 20, "--out", tmp_path / "cmp")
    assert code == 0, err
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    evaluated = []
    for name in ("stage2", "stage1"):
        code, _, err = run_cli("evaluate", "--pred", tmp_path / f"{name}.csv", "--labels", tiny_data / "test.csv",
                               "--train-labels", tiny_data / "train.csv", "--out", tmp_path / name)
        assert code == 0, err
        evaluated.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    pair = result["pairs"][0]
    assert pair["maps"]["mAP"]["a"] == pytest.approx(evaluated[0]["mAP"], abs=1e-12)
    assert pair["maps"]["mAP"]["b"] == pytest.approx(evaluated[1]["mAP"], abs=1e-12)
    assert pair["mAUROC"]["mauc_a"] == pytest.approx(evaluated[0]["mAUROC"], abs=1e-9)
    assert "## stage2 vs stage1" in out
