"""``chexfusion evaluate`` end to end on small CSVs, and the predictions CSV format it reads."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from chexfusion.errors import UserError
from chexfusion.predictions import read_predictions, write_predictions

CLASSES = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Fracture", "Hernia", "Pneumomediastinum"]
RATES = [0.35, 0.25, 0.06, 0.03, 0.01, 0.0]  # the last class has no positive among the labels
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _labels_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(CLASSES))) < RATES).astype(int)
    y[:, 4] = 0
    y[: 3, 4] = 1  # a rare class with a few positives
    frame = pd.DataFrame({
        "dicom_id": [f"img{i:04d}" for i in range(n)],
        "subject_id": [str(10_000 + i // 6) for i in range(n)],
        "study_id": [str(50_000 + i // 2) for i in range(n)],
        "ViewPosition": ["PA" if i % 2 == 0 else "LATERAL" for i in range(n)],
        "fpath": [f"files/p10/img{i:04d}.jpg" for i in range(n)],
    })
    for k, name in enumerate(CLASSES):
        frame[name] = y[:, k]
    return frame, y


@pytest.fixture
def dataset(tmp_path):
    """labels.csv (evaluation), train.csv (other prevalences) and pred.csv (+ a zero-shot class without labels)."""
    labels, y = _labels_frame(240, seed=0)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    train, _ = _labels_frame(400, seed=1)
    train["Hernia"] = 0
    train.loc[:40, "Hernia"] = 1  # ~10.25% of training images: head by training prevalence
    train.to_csv(tmp_path / "train.csv", index=False)
    rng = np.random.default_rng(2)
    probs = np.clip(0.45 * y + 0.55 * rng.random(y.shape), 0.0, 1.0)
    order = rng.permutation(len(labels))  # predictions in another row order than the labels
    zero_shot = rng.random((len(labels), 1))
    write_predictions(tmp_path / "pred.csv", labels["dicom_id"][order], labels["study_id"][order],
                      CLASSES + ["Bulla"], np.hstack([probs, zero_shot])[order])
    return tmp_path, y, probs


def _assert_user_error(code, out, err, *must_contain):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("chexfusion: error: ")
    assert "Traceback" not in err
    for text in must_contain:
        assert text in lines[0], lines[0]


def test_evaluate_writes_metrics_per_class_plots_and_report(dataset, run_cli):
    folder, y, probs = dataset
    out = folder / "eval"
    code, stdout, stderr = run_cli("evaluate", "--pred", folder / "pred.csv", "--labels", folder / "labels.csv",
                                   "--train-labels", folder / "train.csv", "--out", out)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mAP", "mAUROC", "mF1", "mECE", "head_mAP", "medium_mAP", "tail_mAP", "per_class"):
        assert key in metrics
    scored = list(range(5))  # Pneumomediastinum has no positive: null and left out
    assert metrics["mAP"] == pytest.approx(average_precision_score(y[:, scored], probs[:, scored]), abs=1e-9)
    assert metrics["mAUROC"] == pytest.approx(roc_auc_score(y[:, scored], probs[:, scored]), abs=1e-9)
    assert metrics["per_class"]["Pneumomediastinum"]["AP"] is None
    assert metrics["undefined_classes"] == ["Pneumomediastinum"]
    assert metrics["n_images"] == 240 and metrics["n_classes_scored"] == 5
    assert set(metrics["per_class"]) == set(CLASSES)
    for name in CLASSES:
        assert {"AP", "AUROC", "F1", "ECE", "n_pos"} <= set(metrics["per_class"][name])
    # Groups come from the training CSV: Hernia is rare here but head in training.
    assert metrics["per_class"]["Hernia"]["group"] == "head"
    assert metrics["prevalence_source"] == "train"
    assert metrics["not_evaluated"] == ["Bulla"]
    assert "Bulla" in stderr

    per_class = pd.read_csv(out / "per_class.csv")
    assert list(per_class["class"]) == CLASSES
    assert per_class.loc[per_class["class"] == "Fracture", "n_pos"].item() == int(y[:, 3].sum())

    report = (out / "report.md").read_text()
    for png in ("per_class_ap.png", "pr_curves.png", "reliability.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        assert f"]({png})" in report
    assert "Bulla" in report and f"{metrics['mAP']:.4f}" in report

    for key in ("mAP", "mAUROC", "mF1", "mECE", "head_mAP", "medium_mAP", "tail_mAP"):
        assert key in stdout
    assert f"{metrics['mAP']:.4f}" in stdout


def test_without_out_prints_summary_and_writes_nothing(dataset, run_cli, monkeypatch):
    folder, _, _ = dataset
    monkeypatch.chdir(folder)
    before = sorted(p.name for p in folder.iterdir())
    code, stdout, stderr = run_cli("evaluate", "--pred", "pred.csv", "--labels", "labels.csv")
    assert code == 0, stderr
    assert "mAP" in stdout and "n images" in stdout and "240" in stdout
    assert sorted(p.name for p in folder.iterdir()) == before


def test_classes_restricts_evaluation(dataset, run_cli):
    folder, y, probs = dataset
    out = folder / "subset"
    code, _, stderr = run_cli("evaluate", "--pred", folder / "pred.csv", "--labels", folder / "labels.csv",
                              "--classes", "Fracture,Atelectasis", "--pr-classes", "Fracture", "--out", out)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class"]) == ["Fracture", "Atelectasis"]
    assert metrics["mAP"] == pytest.approx(average_precision_score(y[:, [3, 0]], probs[:, [3, 0]]), abs=1e-9)


def test_bootstrap_intervals_contain_estimate_and_repeat_per_seed(dataset, run_cli):
    folder, _, _ = dataset
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, stdout, stderr = run_cli("evaluate", "--pred", folder / "pred.csv", "--labels", folder / "labels.csv",
                                       "--bootstrap", 25, "--seed", seed, "--out", folder / name)
        assert code == 0, stderr
        runs.append(json.loads((folder / name / "metrics.json").read_text()))
    first, same, other = runs
    assert first["bootstrap"] == same["bootstrap"] and first["bootstrap"] != other["bootstrap"]
    for key in ("mAP", "mAUROC", "mF1", "mECE"):
        low, high = first["bootstrap"]["intervals"][key]
        assert low <= first[key] <= high
    assert "95% interval" in (folder / "a" / "report.md").read_text()


def test_uncertain_labels_ignored_on_request(tmp_path, run_cli):
    labels, y = _labels_frame(120, seed=5)
    labels["Atelectasis"] = labels["Atelectasis"].astype(object)
    labels.loc[:9, "Atelectasis"] = -1
    labels.to_csv(tmp_path / "labels.csv", index=False)
    probs = np.random.default_rng(0).random(y.shape)
    write_predictions(tmp_path / "pred.csv", labels["dicom_id"], labels["study_id"], CLASSES, probs)
    results = {}
    for policy in ("zero", "ignore"):
        code, _, stderr = run_cli("evaluate", "--pred", tmp_path / "pred.csv", "--labels", tmp_path / "labels.csv",
                                  "--label-policy-uncertain", policy, "--out", tmp_path / policy)
        assert code == 0, stderr
        results[policy] = json.loads((tmp_path / policy / "metrics.json").read_text())["per_class"]["Atelectasis"]
    assert results["zero"]["n_valid"] == 120 and results["ignore"]["n_valid"] == 110
    keep = np.arange(120) >= 10
    assert results["ignore"]["AP"] == pytest.approx(average_precision_score(y[keep, 0], probs[keep, 0]), abs=1e-9)


def _rewrite(path, transform):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(transform(lines)) + "\n")


@pytest.mark.parametrize("case, transform, expected", [
    ("missing id", lambda lines: lines[:-5], ["pred.csv", "5 dicom_id", "no prediction"]),
    ("extra id", lambda lines: lines + ["imgXXXX,1," + ",".join(["0.5"] * 7)], ["pred.csv", "imgXXXX", "not in"]),
    ("duplicate id", lambda lines: lines + [lines[3]], ["pred.csv", "duplicate dicom_id", "lines 4 and 242"]),
    ("label class without prediction column",
     lambda lines: [",".join(c for i, c in enumerate(line.split(",")) if i != 4) for line in lines],
     ["pred.csv", "'Pleural Effusion'"]),
    ("probability above 1", lambda lines: lines[:6] + [lines[6].rsplit(",", 1)[0] + ",1.5"] + lines[7:],
     ["pred.csv", "line 7", "'Bulla'", "1.5"]),
    ("non-numeric probability", lambda lines: lines[:2] + [lines[2].rsplit(",", 1)[0] + ",oops"] + lines[3:],
     ["pred.csv", "line 3", "'Bulla'", "'oops'"]),
    ("missing study_id column", lambda lines: [",".join(line.split(",")[:1] + line.split(",")[2:]) for line in lines],
     ["pred.csv", "study_id"]),
])
def test_user_errors_exit_2_with_one_line(dataset, run_cli, case, transform, expected):
    folder, _, _ = dataset
    _rewrite(folder / "pred.csv", transform)
    code, out, err = run_cli("evaluate", "--pred", folder / "pred.csv", "--labels", folder / "labels.csv")
    _assert_user_error(code, out, err, *expected)


def test_class_choice_errors_exit_2(dataset, run_cli):
    folder, _, _ = dataset
    base = ("evaluate", "--pred", folder / "pred.csv", "--labels", folder / "labels.csv")
    _assert_user_error(*run_cli(*base, "--classes", "Bulla"), "labels.csv", "'Bulla'")
    _assert_user_error(*run_cli(*base, "--classes", "Nonexistent"), "pred.csv", "'Nonexistent'")
    _assert_user_error(*run_cli(*base, "--pr-classes", "Atelectasis,Nope"), "--pr-classes", "'Nope'")
    # an empty or repeated name is refused, not dropped (one rule with predict and ablate)
    _assert_user_error(*run_cli(*base, "--classes", "Atelectasis,,Fracture"), "--classes", "empty name")
    _assert_user_error(*run_cli(*base, "--classes", "Fracture,Fracture"), "--classes", "'Fracture' given twice")
    _assert_user_error(*run_cli("evaluate", "--pred", folder / "absent.csv", "--labels", folder / "labels.csv"),
                       "absent.csv")


def test_predictions_round_trip_keeps_ids_as_text_and_float32_values(tmp_path):
    probs = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    ids = ["00012", "7", "a-b", "3.0", "1e5"]  # ids that pandas would otherwise turn into numbers
    write_predictions(tmp_path / "p.csv", ids, ["001", "001", "2", "2", "3"], ["A", "B c", "D"], probs)
    frame, classes, read = read_predictions(tmp_path / "p.csv")
    assert list(frame["dicom_id"]) == ids and list(frame["study_id"]) == ["001", "001", "2", "2", "3"]
    assert classes == ["A", "B c", "D"]
    np.testing.assert_array_equal(read.astype(np.float32), probs)
    _, subset, sub_probs = read_predictions(tmp_path / "p.csv", classes=["D", "A"])
    assert subset == ["D", "A"]
    np.testing.assert_array_equal(sub_probs, read[:, [2, 0]])
    (tmp_path / "bom.csv").write_text("\ufeffdicom_id,study_id,A\nx,1,0.25\n", encoding="utf-8")  # Excel export
    frame, classes, read = read_predictions(tmp_path / "bom.csv")
    assert list(frame["dicom_id"]) == ["x"] and classes == ["A"] and read[0, 0] == 0.25


@pytest.mark.parametrize("text, expected", [
    ("dicom_id,study_id,A\na,1,0.2\nb,1,\n", "line 3, column 'A': empty probability"),
    ("dicom_id,study_id,A\na,1,nan\n", "line 2, column 'A'"),
    ("dicom_id,study_id,A\na,1,-0.1\n", "line 2, column 'A'"),
    ("dicom_id,study_id,A\na,1,0.1,0.3\n", "line 2 has more fields"),
    ("dicom_id,study_id,A,A\na,1,0.1,0.3\n", "column 'A' appears twice"),
    ("study_id,A\n1,0.1\n", "missing column 'dicom_id'"),
    ("dicom_id,study_id,A\n,1,0.1\n", "line 2: empty dicom_id"),
    ("", "empty predictions CSV"),
])
def test_read_predictions_errors_name_line_and_column(tmp_path, text, expected):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        read_predictions(path)
    assert expected in str(info.value) and "p.csv" in str(info.value)


def test_write_predictions_refuses_bad_values(tmp_path):
    with pytest.raises(ValueError):
        write_predictions(tmp_path / "p.csv", ["a"], ["1"], ["A"], np.array([[1.2]]))
    with pytest.raises(ValueError):
        write_predictions(tmp_path / "p.csv", ["a", "b"], ["1", "1"], ["A"], np.array([[0.2]]))
    assert not (tmp_path / "p.csv").exists()


def test_cxr_lt_2024_decision_metrics_and_validation_thresholds(dataset, run_cli):
    """metrics.json and the report carry micro-F1, FNR, exact match, ..., the group Avg, the ECE binning and,
    with --val-pred/--val-labels, the test metrics at per-class thresholds chosen on validation."""
    from sklearn.metrics import f1_score

    from chexfusion.decision_metrics import best_f1_threshold

    folder, y, probs = dataset
    val, y_val = _labels_frame(160, seed=9)
    val.to_csv(folder / "val_labels.csv", index=False)
    p_val = np.clip(0.45 * y_val + 0.55 * np.random.default_rng(10).random(y_val.shape), 0.0, 1.0)
    write_predictions(folder / "val_pred.csv", val["dicom_id"], val["study_id"], CLASSES, p_val)
    out = folder / "tuned"
    code, stdout, stderr = run_cli("evaluate", "--pred", folder / "pred.csv", "--labels", folder / "labels.csv",
                                   "--val-pred", folder / "val_pred.csv", "--val-labels", folder / "val_labels.csv",
                                   "--bootstrap", 5, "--out", out)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["micro_F1"] == pytest.approx(f1_score(y, probs >= 0.5, average="micro"), abs=1e-9)
    for key in ("mFNR", "exact_match", "macro_precision", "macro_recall", "group_avg_mAP"):
        assert key in metrics
    assert metrics["ece_binning"] == "equal-width"
    assert metrics["bootstrap"]["unit"] == "study" and metrics["bootstrap"]["n_units"] == 120
    tuned = metrics["val_thresholds"]
    assert tuned["fallback_classes"] == ["Pneumomediastinum"]  # no validation positive: keeps 0.5
    for k, name in enumerate(CLASSES[:5]):
        threshold = best_f1_threshold(y_val[:, k], p_val[:, k])
        assert tuned["thresholds"][name] == threshold
        assert tuned["per_class"][name]["F1"] == pytest.approx(f1_score(y[:, k], probs[:, k] >= threshold), abs=1e-9)
    assert tuned["mF1"] == pytest.approx(np.mean([tuned["per_class"][c]["F1"] for c in CLASSES[:5]]), abs=1e-12)
    per_class = pd.read_csv(out / "per_class.csv")
    assert {"FNR", "precision", "recall", "val_threshold", "val_F1", "val_FNR"} <= set(per_class.columns)
    report = (out / "report.md").read_text()
    assert "## Decisions" in report and "at validation-chosen thresholds" in report
    assert "15 equal-width bins" in report and "resamples of the studies" in report
    assert "micro_F1" in stdout and "equal-width" in stdout


def test_validation_threshold_errors_exit_2(dataset, run_cli):
    folder, _, _ = dataset
    base = ("evaluate", "--pred", folder / "pred.csv", "--labels", folder / "labels.csv")
    _assert_user_error(*run_cli(*base, "--val-pred", folder / "pred.csv"), "--val-pred needs --val-labels")
    labels = pd.read_csv(folder / "labels.csv").drop(columns=["Fracture"])
    labels.to_csv(folder / "val_labels.csv", index=False)
    _assert_user_error(*run_cli(*base, "--val-pred", folder / "pred.csv", "--val-labels", folder / "val_labels.csv"),
                       "val_labels.csv", "'Fracture'")
