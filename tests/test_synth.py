"""The synthetic demo dataset: format, realism, determinism and view-specific signatures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexfusion.cli import main
from chexfusion.data.classes import label_set
from chexfusion.data.synth.findings import SIGNATURES, view_only
from chexfusion.data.synth.labels import LATENT, draw_study_labels, label_model, written_labels
from chexfusion.data.synth.radiograph import RadiographSpec, render
from chexfusion.data.views import view_of
from chexfusion.io import file_sha256

BASE_COLUMNS = ["dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath"]
NIH_NAMES = {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
             "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"}


def synth(out: Path, *extra) -> None:
    code = main(["synth", "--out", str(out), *map(str, extra)])
    assert code == 0


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def all_files(root: Path) -> dict[str, str]:
    """relative path -> sha256: equal dicts mean byte-identical trees; a failure diff stays short."""
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The acceptance-size dataset: 300 studies, small images."""
    out = tmp_path_factory.mktemp("synth") / "d"
    synth(out, "--studies", 300, "--image-size", 64, "--seed", 1, "--workers", 1)
    return out


@pytest.fixture(scope="module")
def splits(dataset) -> dict[str, list[dict]]:
    return {s: read_rows(dataset / f"{s}.csv")[1] for s in ("train", "development", "test")}


def test_same_arguments_give_identical_bytes_whatever_the_workers(tmp_path):
    args = ("--studies", 60, "--image-size", 48, "--seed", 5, "--external-images", 40)
    synth(tmp_path / "a", *args, "--workers", 1)
    synth(tmp_path / "b", *args, "--workers", 2)
    first, second = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    # Re-running into the same folder replaces the earlier dataset with the same bytes.
    synth(tmp_path / "a", *args, "--workers", 1)
    assert all_files(tmp_path / "a") == first

    synth(tmp_path / "c", *args[:-4], "--seed", 6, "--external-images", 40, "--workers", 1)
    other = all_files(tmp_path / "c")
    assert other["train.csv"] != first["train.csv"]
    assert sorted(k for k in first if k.endswith(".jpg")) != sorted(k for k in other if k.endswith(".jpg"))
    nih = "external/nih/images/00000001_000.png"
    assert other[nih] != first[nih]


def test_csv_layout_and_images(dataset, splits):
    classes = [c.name for c in label_set("cxr-lt-2024")]
    for split in splits:
        header, rows = read_rows(dataset / f"{split}.csv")
        assert header == BASE_COLUMNS + classes
        for row in rows:
            subject, study = row["subject_id"], row["study_id"]
            assert len(subject) == 8 and len(study) == 8 and len(row["dicom_id"]) == 44
            assert row["fpath"] == f"files/p{subject[:2]}/p{subject}/s{study}/{row['dicom_id']}.jpg"
            with Image.open(dataset / row["fpath"]) as image:
                assert image.format == "JPEG" and image.mode == "L" and image.size == (64, 64)
                image.load()
            assert {row[c] for c in classes} <= {"0", "1"}


def test_every_class_has_positive_studies_in_every_split(splits):
    classes = [c.name for c in label_set("cxr-lt-2024")]
    for split, rows in splits.items():
        studies = {r["study_id"]: r for r in rows}
        for c in classes:
            positives = sum(r[c] == "1" for r in studies.values())
            assert positives >= 3, (split, c, positives)


def test_patient_level_split_study_labels_and_normal(splits):
    classes = [c.name for c in label_set("cxr-lt-2024")]
    subjects = {s: {r["subject_id"] for r in rows} for s, rows in splits.items()}
    assert not subjects["train"] & subjects["development"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["development"] & subjects["test"]
    labels_of_study: dict[str, tuple] = {}
    for rows in splits.values():
        for r in rows:
            labels = tuple(r[c] for c in classes)
            assert labels_of_study.setdefault(r["study_id"], labels) == labels, "labels differ within a study"
            if r["Normal"] == "1":
                assert all(r[c] == "0" for c in classes if c != "Normal")


def test_study_sizes_and_views_follow_the_reference(splits):
    rows = [r for split in splits.values() for r in split]
    per_study: dict[str, int] = {}
    for r in rows:
        per_study[r["study_id"]] = per_study.get(r["study_id"], 0) + 1
    assert max(per_study.values()) >= 5
    views = [view_of(r["ViewPosition"]) for r in rows]
    assert {"frontal", "lateral", "unknown"} <= set(views)
    assert sum(v == "frontal" for v in views) > sum(v == "lateral" for v in views) > 0
    for r in rows:
        expected = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
                    "": ""}.get(r["ViewPosition"])
        if expected is not None:
            assert r["ViewCodeSequence_CodeMeaning"] == expected


def test_metadata_describes_the_dataset(dataset, splits):
    meta = json.loads((dataset / "synth_meta.json").read_text())
    assert meta["seed"] == 1 and meta["label_set"] == "cxr-lt-2024" and meta["image_size"] == 64
    for split, rows in splits.items():
        assert meta["counts"][split]["images"] == len(rows)
        assert meta["counts"][split]["studies"] == len({r["study_id"] for r in rows})
    assert len(meta["frontal_only"]) >= 3 and len(meta["lateral_only"]) >= 3
    assert not set(meta["frontal_only"]) & set(meta["lateral_only"])
    assert set(meta["signatures"]) == set(meta["classes"])


def test_nih_external_set(dataset, splits):
    header, rows = read_rows(dataset / "external" / "nih" / "Data_Entry_2017.csv")
    assert header[:7] == ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                          "Patient Gender", "View Position"]
    assert len(rows) > 0
    subjects = {r["subject_id"] for split in splits.values() for r in split}
    for r in rows:
        labels = r["Finding Labels"].split("|")
        assert labels == ["No Finding"] or set(labels) <= NIH_NAMES
        assert r["View Position"] in ("PA", "AP")
        assert r["Patient ID"] not in subjects
        assert r["Image Index"] == f"{int(r['Patient ID']):08d}_{int(r['Follow-up #']):03d}.png"
    with Image.open(dataset / "external" / "nih" / "images" / rows[0]["Image Index"]) as image:
        assert image.format == "PNG" and image.size == (64, 64)
    assert any(r["Finding Labels"] != "No Finding" for r in rows)


def test_label_set_2023(tmp_path):
    synth(tmp_path / "d", "--studies", 40, "--image-size", 32, "--label-set", "cxr-lt-2023", "--external-images", 0,
          "--workers", 1)
    header, rows = read_rows(tmp_path / "d" / "train.csv")
    classes = [c.name for c in label_set("cxr-lt-2023")]
    assert len(classes) == 26 and header == BASE_COLUMNS + classes
    for r in rows:  # CheXpert convention: "No Finding" allows devices, nothing else
        if r["No Finding"] == "1":
            assert all(r[c] == "0" for c in classes if c not in ("No Finding", "Support Devices"))
    meta = json.loads((tmp_path / "d" / "synth_meta.json").read_text())
    assert len(meta["frontal_only"]) >= 3 and len(meta["lateral_only"]) >= 3


def test_label_noise_flips_training_labels_only(tmp_path):
    args = ("--studies", 40, "--image-size", 32, "--seed", 3, "--external-images", 0, "--workers", 1)
    synth(tmp_path / "clean", *args)
    synth(tmp_path / "noisy", *args, "--label-noise", 0.2)
    for split in ("development", "test"):
        assert (tmp_path / "clean" / f"{split}.csv").read_bytes() == (tmp_path / "noisy" / f"{split}.csv").read_bytes()
    _, clean = read_rows(tmp_path / "clean" / "train.csv")
    _, noisy = read_rows(tmp_path / "noisy" / "train.csv")
    classes = [c.name for c in label_set("cxr-lt-2024")]
    flips = sum(a[c] != b[c] for a, b in zip(clean, noisy) for c in classes)
    assert 0.1 < flips / (len(clean) * len(classes)) < 0.3
    clean_images = {k: v for k, v in all_files(tmp_path / "clean").items() if k.endswith(".jpg")}
    noisy_images = {k: v for k, v in all_files(tmp_path / "noisy").items() if k.endswith(".jpg")}
    assert clean_images == noisy_images  # the pictures show the true findings


def test_prevalences_and_cooccurrence_follow_the_model():
    model = label_model("cxr-lt-2024")
    n = 40_000
    labels, _drawn, normal, _f, _a = draw_study_labels(model, np.random.default_rng(0), np.arange(n), n)
    written = written_labels(model, labels, normal)
    for j, name in enumerate(model.classes):
        assert abs(written[:, j].mean() - model.target[name]) < 0.15 * model.target[name] + 0.002, name
    col = {name: LATENT.index(name) for name in LATENT}
    assert labels[labels[:, col["Lobar Atelectasis"]], col["Atelectasis"]].mean() > 0.7
    assert labels[labels[:, col["Hydropneumothorax"]], col["Pneumothorax"]].mean() > 0.7
    assert labels[labels[:, col["Rib Fracture"]], col["Fracture"]].mean() > 0.6
    edema_given_cardiomegaly = labels[labels[:, col["Cardiomegaly"]], col["Edema"]].mean()
    assert edema_given_cardiomegaly > 1.3 * labels[:, col["Edema"]].mean()
    assert not labels[normal].any()


def visible_change(before, after) -> bool:
    """At least a few pixels changed by a clearly visible amount (10 grey levels)."""
    return int((np.abs(after - before) > 10).sum()) >= 8


def _pair(finding, view, size=96):
    def spec(findings):
        return RadiographSpec(7, (10, 3), (11, 4), (14, 5), view, False, "F", 70.0, findings, size)
    return render(spec(())).astype(np.int16), render(spec((finding,))).astype(np.int16)


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_view_only_findings_change_their_view_and_not_the_other(view):
    other = "lateral" if view == "frontal" else "frontal"
    names = view_only(view)
    assert len(names) >= 3
    for name in names:
        without, with_it = _pair(name, view)
        assert visible_change(without, with_it), f"{name} invisible on the {view} view"
        same_without, same_with = _pair(name, other)
        assert np.array_equal(same_without, same_with), f"{name} shows on the {other} view"


def test_every_finding_is_visible_in_its_views():
    for name, sig in SIGNATURES.items():
        for view in sig.views:
            without, with_it = _pair(name, view)
            assert visible_change(without, with_it), f"{name} has no visible signature on the {view} view"


def test_bad_arguments_are_one_line_errors(tmp_path, run_cli):
    code, _, err = run_cli("synth", "--out", tmp_path / "x", "--studies", 5)
    assert code == 2 and "--studies" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("synth", "--out", tmp_path / "x", "--label-noise", 0.7)
    assert code == 2 and "--label-noise" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    code, _, err = run_cli("synth", "--out", busy, "--studies", 20)
    assert code == 2 and str(busy) in err and (busy / "mine.txt").exists()
