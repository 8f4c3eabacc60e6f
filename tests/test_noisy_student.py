"""Noisy-student self-training: student targets, round configs, and a tiny run on the synthetic NIH-format set."""

import json

import numpy as np
import pandas as pd
import pipeline
import pytest
import torch

from chexfusion.config import load_config
from chexfusion.data.augment import AugmentConfig
from chexfusion.errors import UserError
from chexfusion.io import file_sha256
from chexfusion.stage1.config import NoisyStudentConfig, Stage1Config
from chexfusion.stage1.model import load_stage1_run
from chexfusion.stage1.noisy_student import (
    PSEUDO_LABELS,
    REPORT,
    align_to_prevalence,
    read_pseudo_labels,
    round_config,
    student_targets,
    write_pseudo_labels,
)

NAN = np.nan


@pytest.mark.parametrize("mode, uncertain, targets, mask", [
    ("soft", "pseudo", [1.0, 0.0, 0.8, 0.3], [1, 1, 1, 1]),
    ("hard", "pseudo", [1.0, 0.0, 1.0, 0.0], [1, 1, 1, 1]),
    ("soft", "one", [1.0, 0.0, 1.0, 0.3], [1, 1, 1, 1]),
    ("soft", "ignore", [1.0, 0.0, 0.0, 0.3], [1, 1, 0, 1]),
])
def test_student_targets_keep_the_sets_own_labels_and_fill_the_rest(mode, uncertain, targets, mask):
    raw = np.array([[1.0, 0.0, -1.0, NAN]], dtype=np.float32)  # own positive, own negative, uncertain, unknown
    teacher = np.array([[0.1, 0.9, 0.8, 0.3]], dtype=np.float32)  # the teacher disagrees with the own labels
    ns = NoisyStudentConfig(pseudo_label=mode, uncertain_label=uncertain, threshold=0.5)
    got_targets, got_mask = student_targets(raw, teacher, ns)
    np.testing.assert_allclose(got_targets[0], targets, atol=1e-6)
    np.testing.assert_array_equal(got_mask[0], mask)


def test_aligned_pseudo_labels_match_the_prevalence_and_keep_the_ranking():
    rng = np.random.default_rng(0)
    inflated = rng.uniform(0.2, 0.9, size=(500, 3)).astype(np.float32)  # an ASL teacher: everything looks likely
    prevalence = np.array([0.3, 0.05, 0.002])
    aligned = align_to_prevalence(inflated, prevalence)
    np.testing.assert_allclose(aligned.mean(axis=0), prevalence, rtol=1e-3)
    for k in range(3):
        assert (np.argsort(aligned[:, k], kind="stable") == np.argsort(inflated[:, k], kind="stable")).all()


def test_round_zero_is_plain_stage1_and_students_get_the_noise(repo_root):
    overrides = ["noisy_student.rounds=2", "noisy_student.student_epochs=3"]
    cfg = load_config(Stage1Config, repo_root / "stage1/noisy-student.yaml", overrides)
    teacher, student = round_config(cfg, 0), round_config(cfg, 2)
    plain = load_config(Stage1Config, repo_root / "stage1/config.yaml")
    assert (teacher.augment, teacher.model, teacher.train) == (plain.augment, plain.model, plain.train)
    assert teacher.output_dir.endswith("demo-noisy-student") and teacher.name == "round-0"
    assert teacher.noisy_student.rounds == student.noisy_student.rounds == 0  # each round is one plain run
    assert student.name == "round-2" and student.train.epochs == 3
    assert student.model.drop_path_rate == 0.1 and student.model.decoder_dropout == 0.1
    strong = AugmentConfig.strong()
    assert student.augment.noise_std == strong.noise_std and student.augment.rotate_deg == strong.rotate_deg
    assert student.augment.hflip == 0.0  # the demo's synthetic anatomy is asymmetric


@pytest.mark.parametrize("override, key", [
    ("noisy_student.external=[]", "noisy_student.external"),
    ("noisy_student.pseudo_label=sharp", "noisy_student.pseudo_label"),
    ("noisy_student.external=[{format: mimic, csv: a.csv, image_root: b}]", "noisy_student.external[0].format"),
    ("noisy_student.external=[{format: nih, csv: a.csv, image_root: b}, {format: nih, csv: c.csv, image_root: d}]",
     "noisy_student.external[1].name"),
])
def test_bad_noisy_student_config_is_one_line_exit_2(run_cli, repo_root, monkeypatch, override, key):
    monkeypatch.chdir(repo_root)
    code, _, err = run_cli("stage1", "--config", "stage1/noisy-student.yaml", override)
    assert code == 2 and key in err and len(err.strip().splitlines()) == 1


def test_saved_pseudo_labels_from_another_teacher_are_refused(tmp_path):
    from chexfusion.data.cxr_lt import CxrLtTable
    from chexfusion.stage1.config import ExternalSetConfig

    frame = pd.DataFrame({"dataset": ["nih", "nih"], "dicom_id": ["a.png", "b.png"], "Edema": [0.2, 0.7]})
    path = tmp_path / "round-1" / PSEUDO_LABELS
    write_pseudo_labels(path, frame, "teacher-sha")
    table = CxrLtTable(tmp_path, pd.DataFrame({"dicom_id": ["b.png", "a.png"]}), ["Edema"],
                       np.full((2, 1), NAN, np.float32))
    sets = [(ExternalSetConfig(format="nih", csv="x", image_root="y"), table)]
    aligned = read_pseudo_labels(path, "teacher-sha", sets, ["Edema"])
    assert aligned["dicom_id"].tolist() == ["b.png", "a.png"] and aligned["Edema"].tolist() == [0.7, 0.2]
    with pytest.raises(UserError, match="made by another teacher"):
        read_pseudo_labels(path, "other-sha", sets, ["Edema"])
    table.frame = pd.DataFrame({"dicom_id": ["a.png", "c.png"]})
    with pytest.raises(UserError, match="no pseudo-label for nih image 'c.png'"):
        read_pseudo_labels(path, "teacher-sha", sets, ["Edema"])


def _overrides(data, runs):
    nih = data / "external" / "nih"
    external = f"noisy_student.external=[{{format: nih, csv: '{nih / 'Data_Entry_2017.csv'}', image_root: '{nih}'}}]"
    extra = {"train.max_steps_per_epoch": 2, "data.test_csv": "null", "noisy_student.student_init": "teacher"}
    return [*pipeline.stage1_overrides(data, runs, "ns", **extra), external]


@pytest.mark.slow
def test_one_round_writes_pseudo_labels_and_report_and_a_rerun_redoes_nothing(tiny_data, tmp_path, repo_root,
                                                                               monkeypatch, run_cli):
    monkeypatch.chdir(repo_root)
    args = ["stage1", "--config", "stage1/noisy-student.yaml", *_overrides(tiny_data, tmp_path)]
    code, out, err = run_cli(*args)
    assert code == 0, err
    top = tmp_path / "ns"
    assert "round  model" in out and "student" in out

    pseudo = pd.read_parquet(top / "round-1" / PSEUDO_LABELS)
    external = pd.read_csv(tiny_data / "external" / "nih" / "Data_Entry_2017.csv")
    run = load_stage1_run(top)
    assert pseudo["dicom_id"].tolist() == external["Image Index"].tolist()
    assert list(pseudo.columns) == ["dataset", "dicom_id", *run.classes]
    probs = pseudo[run.classes].to_numpy()
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()

    report = json.loads((top / REPORT).read_text())
    assert [row["round"] for row in report["table"]] == [0, 1]
    student = report["table"][1]
    assert student["pseudo_labelled_images"] == len(external) and student["unreadable_external_images"] == 0
    assert student["teacher_validation"] == report["table"][0]["validation"]
    for row in report["table"]:
        assert set(row["validation"]) == {"mAP", "mAUROC", "head_mAP", "medium_mAP", "tail_mAP"}
    # The top folder is the final student, usable as any stage-1 run.
    assert file_sha256(top / "model.safetensors") == file_sha256(top / "round-1" / "model.safetensors")
    assert json.loads((top / "metrics.json").read_text())["noisy_student"] == report
    assert run.model(torch.zeros(1, 3, pipeline.IMAGE_SIZE, pipeline.IMAGE_SIZE)).shape == (1, len(run.classes))

    # A finished run is reported, not retrained.
    code, out, _ = run_cli(*args)
    assert code == 0 and "noisy student run" in out and "is complete" in out and "round  model" in out

    # Interrupted before publishing: the finished rounds and their pseudo-labels are not redone.
    kept = {p: p.stat().st_mtime_ns for p in (top / "round-0" / "model.safetensors",
                                              top / "round-1" / "model.safetensors", top / "round-1" / PSEUDO_LABELS)}
    (top / "metrics.json").unlink()
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert out.count("is complete") == 2 and {p: p.stat().st_mtime_ns for p in kept} == kept
    assert json.loads((top / REPORT).read_text()) == report

    # Interrupted inside the student's round: its saved pseudo-labels are reused, the student trains again.
    (top / "round-1" / "metrics.json").unlink()
    (top / "metrics.json").unlink()
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "reusing" in out and PSEUDO_LABELS in out
    assert (top / "round-1" / PSEUDO_LABELS).stat().st_mtime_ns == kept[top / "round-1" / PSEUDO_LABELS]
    assert (top / "round-0" / "model.safetensors").stat().st_mtime_ns == kept[top / "round-0" / "model.safetensors"]
    assert json.loads((top / REPORT).read_text())["table"][1]["validation"] == student["validation"]
