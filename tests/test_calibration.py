"""Temperature scaling: fitted on validation, stored in the run, applied by predict / the API unless raw is asked."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import chexfusion
from chexfusion.calibration import fit_temperature, scale
from chexfusion.errors import UserError


def test_an_overconfident_class_gets_the_temperature_that_undoes_it():
    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.02, 0.98, 20000)
    labels = (rng.uniform(size=true_p.size) < true_p).astype(float)
    logit = np.log(true_p / (1 - true_p))
    overconfident = 1 / (1 + np.exp(-3.0 * logit))  # logits three times too large
    assert fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(true_p, labels) == pytest.approx(1.0, rel=0.05)


def test_scaling_keeps_the_ranking_and_one_label_classes_keep_t_1():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=(200, 2))
    y = (rng.uniform(size=200) < p[:, 0]).astype(int)
    scaled = scale(p, np.array([0.4, 2.5]))
    assert roc_auc_score(y, scaled[:, 0]) == pytest.approx(roc_auc_score(y, p[:, 0]))
    assert np.array_equal(np.argsort(scaled[:, 1]), np.argsort(p[:, 1]))
    assert fit_temperature(p[:, 0], np.zeros(200)) == 1.0


@pytest.fixture
def run_copy(tiny_stage2, tmp_path):
    return shutil.copytree(tiny_stage2, tmp_path / "run")


def test_calibrate_stores_the_fit_and_predict_applies_it(run_copy, tiny_data, run_cli, tmp_path):
    code, out, _ = run_cli("calibrate", "--model", run_copy)
    assert code == 0 and "(validation): mECE" in out and "(test): mECE" in out
    stored = json.loads((run_copy / "calibration.json").read_text())
    raw, cal = stored["validation"]["mECE_raw"], stored["validation"]["mECE_calibrated"]
    assert cal <= raw + 1e-9  # fitted on this split: no worse on it
    assert stored["validation"]["mAUROC_calibrated"] == pytest.approx(stored["validation"]["mAUROC_raw"])

    args = ["--model", run_copy, "--csv", tiny_data / "test.csv", "--image-root", tiny_data]
    assert run_cli("predict", *args, "--out", tmp_path / "cal.csv")[0] == 0
    assert run_cli("predict", *args, "--out", tmp_path / "raw.csv", "--uncalibrated")[0] == 0
    calibrated, uncalibrated = (pd.read_csv(tmp_path / f).iloc[:, 2:].to_numpy() for f in ("cal.csv", "raw.csv"))
    temps = np.array([stored["temperatures"][c] for c in pd.read_csv(tmp_path / "cal.csv", nrows=0).columns[2:]])
    np.testing.assert_allclose(calibrated, scale(uncalibrated, temps), atol=1e-6)
    api_raw = chexfusion.load(run_copy, device="cpu", calibrated=False).predict_csv(tiny_data / "test.csv", tiny_data)
    np.testing.assert_allclose(api_raw.iloc[:, 2:].to_numpy(), uncalibrated, atol=1e-6)


def test_a_damaged_calibration_file_is_refused(run_copy):
    (run_copy / "calibration.json").write_text(json.dumps({"temperatures": {"Atelectasis": -1},
                                                           "default_temperature": 1.0}))
    with pytest.raises(UserError, match="calibration.json does not fit"):
        chexfusion.load(run_copy, device="cpu")
    (run_copy / "calibration.json").write_text("{")
    with pytest.raises(UserError, match="calibration.json is damaged"):
        chexfusion.load(run_copy, device="cpu")
