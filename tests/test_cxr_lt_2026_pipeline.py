"""The CXR-LT 2026 path end to end on a tiny synthetic twin: challenge layout -> convert -> stage 1 with the
winner's pieces (CSRA, distribution-balanced loss, repeat-factor sampling, percentile 16-bit mapping) -> a Task 1
submission -> evaluate --task. Stage 2 reads the same converted CSVs as any CXR-LT CSV (tests/test_pipeline.py)."""

import csv
import json

import numpy as np
import pytest
from pipeline import cli

from chexfusion.data.padchest import task_classes
from chexfusion.data.synth import cxr_lt_2026 as layout


@pytest.fixture(scope="module")
def run(tmp_path_factory, repo_root):
    import os

    root = tmp_path_factory.mktemp("cxr26")
    data, conv = root / "data", root / "converted"
    cli("synth", "--out", data, "--studies", 60, "--label-set", "cxr-lt-2026", "--image-size", 64, "--workers", 1)
    convert = ["convert", "--format", "cxr-lt-2026", "--image-root", data / layout.IMAGE_FOLDER,
               "--padchest-metadata", data / layout.METADATA_CSV]
    cli(*convert, "--labels", data / layout.TRAIN_CSV, "--removal", data / layout.REMOVAL_CSV, "--out",
        conv / "train.csv")
    cli(*convert, "--labels", data / layout.VALIDATION_CSV, "--out", conv / "validation.csv")
    cli(*convert, "--labels", data / layout.TEST_CSVS["1"], "--out", conv / "test.csv")
    cli(*convert, "--labels", data / layout.HELD_LABELS["1"], "--out", conv / "held1.csv")
    old = os.getcwd()
    os.chdir(repo_root)
    try:
        cli("stage1", "--config", "stage1/cxr-lt-2026-demo.yaml", f"output_dir={root / 'runs'}", "name=tiny",
            f"data.image_root={data / layout.IMAGE_FOLDER}", f"data.train_csv={conv / 'train.csv'}",
            f"data.val_csv={conv / 'validation.csv'}", f"data.test_csv={conv / 'held1.csv'}", "data.image_size=64",
            "train.epochs=1", "train.batch_size=16", "sampling.threshold=0.2")
    finally:
        os.chdir(old)
    return {"root": root, "data": data, "conv": conv, "run": root / "runs" / "tiny"}


def test_the_run_records_the_2026_choices(run):
    info = json.loads((run["run"] / "run.json").read_text())
    assert info["preprocess"]["intensity"] == "percentile"
    assert info["classes"] == task_classes("1")


def test_task1_submission_from_the_run_scores_against_the_held_labels(run, run_cli):
    sub = run["root"] / "task1.csv"
    code, _, err = run_cli("predict", "--model", run["run"], "--csv", run["conv"] / "test.csv", "--image-root",
                           run["data"] / layout.IMAGE_FOLDER, "--submission", "cxr-lt-2026-task1", "--out", sub)
    assert code == 0, err
    rows = list(csv.reader(open(sub)))
    test_ids = [r["ImageID"] for r in csv.DictReader(open(run["data"] / layout.TEST_CSVS["1"]))]
    assert rows[0] == ["ImageID", *task_classes("1")] and [r[0] for r in rows[1:]] == test_ids
    out = run["root"] / "report"
    code, stdout, err = run_cli("evaluate", "--task", "cxr-lt-2026-1", "--pred", sub, "--labels",
                                run["data"] / layout.HELD_LABELS["1"], "--train-labels", run["conv"] / "train.csv",
                                "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 < metrics["mAP"] <= 1.0 and len(metrics["per_class"]) == 30

    gated_path = run["root"] / "gated.csv"
    code, _, err = run_cli("predict", "--model", run["run"], "--csv", run["conv"] / "test.csv", "--image-root",
                           run["data"] / layout.IMAGE_FOLDER, "--submission", "cxr-lt-2026-task1", "--out", gated_path,
                           "--normal-gating", "1")
    assert code == 0, err
    plain = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    gated = np.array([[float(v) for v in r[1:]] for r in list(csv.reader(open(gated_path)))[1:]])
    assert np.allclose(gated[:, 0], plain[:, 0])  # Normal keeps its probability
    assert np.allclose(gated[:, 1:], plain[:, 1:] * (1 - plain[:, :1]), atol=1e-6)
