"""CXR-LT 2026 submissions: predict --submission writes the server's CSV, evaluate --task checks and scores one."""

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from test_padchest import write_csv

from chexfusion.data.padchest import task_classes
from chexfusion.errors import UserError
from chexfusion.submission import read_submission, write_submission

IDS = ["216840111366964012819207061112010307142602253_04-014-084.png", "1.5E+3.png", "0042.png", "7.png"]


def test_submission_has_imageid_then_the_task_classes_in_official_order(tmp_path):
    official = task_classes("1")
    shuffled = official[::-1] + ["Edema"]  # the model's own order, and a class the task does not have
    probs = np.tile(np.linspace(0.0, 1.0, len(shuffled)), (len(IDS), 1))
    write_submission(tmp_path / "s.csv", IDS, shuffled, probs, "1")
    rows = list(csv.reader(open(tmp_path / "s.csv")))
    assert rows[0] == ["ImageID", *official]
    assert [r[0] for r in rows[1:]] == IDS  # one row per input image, in input order, ids verbatim
    normal = float(rows[1][1])
    assert normal == pytest.approx(probs[0, shuffled.index("Normal")])
    ids, read = read_submission(tmp_path / "s.csv", "1")
    assert ids == IDS and read.shape == (4, 30)


def test_a_model_without_a_task_class_cannot_submit(tmp_path):
    with pytest.raises(UserError, match="scores no 'Scoliosis', 'Osteopenia', 'Bulla' \\(and 3 more\\)"):
        write_submission(tmp_path / "s.csv", IDS, task_classes("1"), np.zeros((4, 30)), "2")


@pytest.fixture
def task2(tmp_path):
    classes = task_classes("2")
    labels = np.array([[1, 0, 0, 1, 0, 1], [0, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]])
    probs = np.array([[0.9, 0.2, 0.1, 0.7, 0.3, 0.6], [0.2, 0.8, 0.3, 0.1, 0.6, 0.4],
                      [0.4, 0.7, 0.9, 0.4, 0.2, 0.1], [0.6, 0.1, 0.8, 0.5, 0.7, 0.9]])
    held = write_csv(tmp_path / "held.csv", ["ImageID", "StudyDate_DICOM", "PatientID", *classes],
                      [[i, "20200101", "8.40E+35", *row] for i, row in zip(IDS, labels.tolist())])
    order = [2, 0, 3, 1]  # a submission need not follow the label file's order
    sub = write_csv(tmp_path / "sub.csv", ["ImageID", *classes],
                     [[IDS[k], *probs[k].tolist()] for k in order])
    return {"held": held, "sub": sub, "labels": labels, "probs": probs, "classes": classes, "tmp": tmp_path}


def test_evaluate_task_scores_a_submission_against_held_labels(run_cli, task2):
    out = task2["tmp"] / "report"
    code, stdout, err = run_cli("evaluate", "--task", "cxr-lt-2026-2", "--pred", task2["sub"], "--labels",
                                task2["held"], "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    expected = np.mean([average_precision_score(task2["labels"][:, k], task2["probs"][:, k]) for k in range(6)])
    assert metrics["mAP"] == pytest.approx(expected)
    assert list(metrics["per_class"]) == task2["classes"]


@pytest.mark.parametrize("change, message", [
    ("extra", "column 'Edema' is not a class of CXR-LT 2026 Task 2"),
    ("missing", "no column for 1 class(es) of Task 2: 'goiter'"),
    ("order", "classes out of the official order: column 2 is 'Osteopenia', expected 'Scoliosis'"),
    ("no_id", "the first column must be 'ImageID'"),
    ("row", "1 dicom_id(s) of"),
    ("duplicate", "duplicate"),
    ("value", "line 2, column 'Bulla': '1.5' is not a probability"),
])
def test_a_bad_submission_is_one_line_exit_2(run_cli, task2, change, message):
    rows = list(csv.reader(open(task2["sub"])))
    header, body = rows[0], rows[1:]
    if change == "extra":
        header, body = header + ["Edema"], [r + ["0.5"] for r in body]
    elif change == "missing":
        header, body = header[:-1], [r[:-1] for r in body]
    elif change == "order":
        header = [header[0], header[2], header[1], *header[3:]]
    elif change == "no_id":
        header = ["dicom_id", *header[1:]]
    elif change == "row":
        body = body[:-1]
    elif change == "duplicate":
        body = body + [body[0]]
    elif change == "value":
        body[0][3] = "1.5"
    sub = write_csv(task2["tmp"] / "bad.csv", header, body)
    code, _, err = run_cli("evaluate", "--task", "cxr-lt-2026-2", "--pred", sub, "--labels", task2["held"])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_held_labels_without_a_task_class_are_refused(run_cli, task2):
    held = write_csv(task2["tmp"] / "held1.csv", ["ImageID", "Normal"], [[i, "0"] for i in IDS])
    code, _, err = run_cli("evaluate", "--task", "cxr-lt-2026-1", "--pred", task2["sub"], "--labels", held)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is not a class of CXR-LT 2026 Task 1" in err  # the submission is checked first


def test_predict_submission_task2_needs_a_text_query_run(run_cli, tiny_data, tiny_stage1, tmp_path):
    code, _, err = run_cli("predict", "--model", tiny_stage1, "--csv", tiny_data / "test.csv", "--image-root",
                           tiny_data, "--out", tmp_path / "s.csv", "--submission", "cxr-lt-2026-task2")
    assert code == 2 and "learned class queries" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("predict", "--model", tiny_stage1, "--csv", tiny_data / "test.csv", "--image-root",
                           tiny_data, "--out", tmp_path / "s.csv", "--submission", "cxr-lt-2026-task1",
                           "--skip-bad-images")
    assert code == 2 and "needs a row for every image" in err
