"""The synthetic demo in the CXR-LT 2026 layout (``chexfusion synth --label-set cxr-lt-2026``).

The same cohort and pictures as the default demo (patients, studies of one to eleven images, frontal and lateral
pictures, the drawn signs), written the way the 2026 challenge and PadChest publish theirs, so ``convert`` and the
whole 2026 pipeline run on it:

- 16-bit grayscale PNGs with 12 or 10 bits stored, under numbered ``ImageDir`` folders (``images/<ImageDir>/``);
- ``CXRLT_2026_training.csv`` (``ImageID, StudyDate_DICOM, PatientID`` in the challenge's lossy float form, then the
  30 Task 1 classes), ``Removal.csv`` (1% of the training images), the unlabelled
  ``CXRLT_2026_TEST_ALL_TASK1.csv`` / ``..._TASK2.csv`` and the class lists ``Train_CLASS.txt`` /
  ``Eval_Class_Task2.txt``;
- a PadChest-style metadata CSV (``ImageID, ImageDir, StudyID, PatientID, Projection``, the DICOM bits and window,
  a ``Report`` and PadChest ``Labels``) with every ``Projection`` value PadChest uses;
- what the challenge keeps and the demo needs: ``CXRLT_2026_validation.csv`` (a labelled, patient-disjoint hold-out
  for model selection) and ``held_labels/task1.csv`` / ``task2.csv``, the test images' labels in the challenge's
  layout, so the pipeline can score both tasks.

Each 2026 class is drawn as one of the generator's signs (``resources/synth_2026_signs.csv``); the six Task 2
classes are never in a training CSV, as in the challenge.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ...io import atomic_write_text
from ...resources import read_table
from ..padchest import task_classes
from .cohort import SPLITS, Cohort
from .labels import LATENT

LABEL_SET = "cxr-lt-2026"
BASE_LABEL_SET = "cxr-lt-2024"  # the cohort whose signs are drawn
IMAGE_FOLDER = "images"
TRAIN_CSV = "CXRLT_2026_training.csv"
VALIDATION_CSV = "CXRLT_2026_validation.csv"
TEST_CSVS = {"1": "CXRLT_2026_TEST_ALL_TASK1.csv", "2": "CXRLT_2026_TEST_ALL_TASK2.csv"}
HELD_LABELS = {"1": "held_labels/task1.csv", "2": "held_labels/task2.csv"}
CLASS_FILES = {"1": "Train_CLASS.txt", "2": "Eval_Class_Task2.txt"}
METADATA_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
REMOVAL_CSV = "Removal.csv"
OUTPUTS = (IMAGE_FOLDER, "held_labels", TRAIN_CSV, VALIDATION_CSV, *TEST_CSVS.values(), *CLASS_FILES.values(),
           METADATA_CSV, REMOVAL_CSV)
ID_COLUMNS = ["ImageID", "StudyDate_DICOM", "PatientID"]
METADATA_COLUMNS = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "ViewPosition_DICOM",
                    "Projection", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Report", "Labels"]
IMAGE_DIRS = 10
REMOVAL_SHARE = 0.01
BITS_STORED = (12, 10)
TWELVE_BIT_SHARE = 0.8
AP_HORIZONTAL_SHARE = 0.3  # of AP films: taken lying down
LATERAL_CODES = {"LATERAL": "L", "LL": "L"}  # other lateral codes (cross-table, swimmer's) PadChest would EXCLUDE


def signs() -> dict[str, str]:
    """2026 class -> the drawn sign (a generator finding, or Normal) that stands for it."""
    return {row["class"]: row["drawn_as"] for row in read_table("synth_2026_signs.csv")}


def padchest_label_names() -> dict[str, str]:
    """2026 class -> the PadChest label name written for it (the first the mapping table gives)."""
    names: dict[str, str] = {}
    for row in read_table("external_label_map.csv"):
        if row["source"] == "padchest" and row["class"]:
            names.setdefault(row["class"], row["source_label"])
    return names


def study_labels(cohort: Cohort, classes: list[str]) -> np.ndarray:
    """(studies, classes) 0/1 of the given 2026 classes, read off the signs drawn for each study."""
    drawn_as = signs()
    out = np.zeros((len(cohort.normal), len(classes)), dtype=np.int8)
    for j, name in enumerate(classes):
        sign = drawn_as[name]
        out[:, j] = cohort.normal if sign == "Normal" else cohort.labels[:, LATENT.index(sign)]
    return out


def _digits(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """``n`` distinct digit strings of ``length`` digits, no leading zero: ids a float would merge."""
    out: set[str] = set()
    ordered = []
    while len(ordered) < n:
        text = str(rng.integers(1, 10)) + "".join(map(str, rng.integers(0, 10, size=length - 1)))
        if text not in out:
            out.add(text)
            ordered.append(text)
    return ordered


class Layout:
    """Ids, folders, projections and bit depths of every image, drawn from the seed."""

    def __init__(self, cohort: Cohort, seed: int):
        rng = np.random.default_rng([seed, 2026])
        n_images = len(cohort.image_study)
        self.cohort = cohort
        self.study_id = _digits(rng, len(cohort.study_id), 45)
        self.patient_id = _digits(rng, len(cohort.subject_id), 36)
        suffix = rng.integers(0, 1000, size=(n_images, 3))
        self.image_id = [f"{base}_{a:02d}-{b:03d}-{c:03d}.png"
                         for base, (a, b, c) in zip(_digits(rng, n_images, 45), suffix % [100, 1000, 1000])]
        self.image_dir = [str(s % IMAGE_DIRS) for s in cohort.image_study]
        self.bits = np.where(rng.random(n_images) < TWELVE_BIT_SHARE, *BITS_STORED)
        horizontal = rng.random(n_images) < AP_HORIZONTAL_SHARE
        self.projection = [self._projection(code, content, h)
                           for code, content, h in zip(cohort.image_code, cohort.image_content, horizontal)]
        self.study_date = [f"20{10 + s % 8:02d}{1 + s % 12:02d}{1 + s % 28:02d}" for s in range(len(cohort.study_id))]

    @staticmethod
    def _projection(code: str, content: str, horizontal: bool) -> str:
        if not code:
            return "UNK"
        if code == "PA":
            return "PA"
        if code == "AP":
            return "AP_horizontal" if horizontal else "AP"
        if content == "lateral":
            return LATERAL_CODES.get(code, "EXCLUDE")
        return "COSTAL"  # oblique and decubitus frontal codes: PadChest's odd series

    def fpath(self, i: int) -> str:
        return f"{IMAGE_FOLDER}/{self.image_dir[i]}/{self.image_id[i]}"

    def patient_float(self, i: int) -> str:
        """The challenge's PatientID: the exact id printed as a float, which merges patients."""
        return f"{float(self.patient_id[self.cohort.study_patient[self.cohort.image_study[i]]]):.2E}"


def _csv_text(header: list[str], rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _id_rows(layout: Layout, images: np.ndarray, labels: np.ndarray | None = None) -> list[list]:
    cohort = layout.cohort
    rows = []
    for i in images:
        s = cohort.image_study[i]
        row = [layout.image_id[i], layout.study_date[s], layout.patient_float(i)]
        rows.append(row + ([] if labels is None else labels[s].tolist()))
    return rows


def metadata_csv(layout: Layout, labels: np.ndarray, classes: list[str]) -> str:
    """The PadChest-style metadata: one row per image, ids exact, a short report and PadChest label names."""
    cohort = layout.cohort
    names = padchest_label_names()
    rows = []
    for i, s in enumerate(cohort.image_study):
        present = [names[c] for c, v in zip(classes, labels[s]) if v]
        report = "sin hallazgos patologicos" if cohort.normal[s] else "hallazgos: " + ", ".join(present)
        bits = int(layout.bits[i])
        rows.append([layout.image_id[i], layout.image_dir[i], layout.study_date[s], layout.study_id[s],
                     layout.patient_id[cohort.study_patient[s]], cohort.image_code[i], layout.projection[i], bits,
                     2 ** (bits - 1), 2 ** bits, report, repr(present)])
    return _csv_text(METADATA_COLUMNS, rows)


def write_csvs(out: Path, layout: Layout, seed: int) -> dict:
    """Every CSV and class list of the layout; returns the counts for ``synth_meta.json``."""
    cohort = layout.cohort
    task1, task2 = task_classes("1"), task_classes("2")
    labels1, labels2 = study_labels(cohort, task1), study_labels(cohort, task2)
    split_of_image = cohort.study_split[cohort.image_study]
    images = {name: np.flatnonzero(split_of_image == k) for k, name in enumerate(SPLITS)}
    train = images["train"]
    rng = np.random.default_rng([seed, 2027])
    removed = np.sort(rng.choice(train, size=max(1, round(REMOVAL_SHARE * len(train))), replace=False))
    atomic_write_text(out / TRAIN_CSV, _csv_text(ID_COLUMNS + task1, _id_rows(layout, train, labels1)))
    atomic_write_text(out / VALIDATION_CSV, _csv_text(ID_COLUMNS + task1,
                                                      _id_rows(layout, images["development"], labels1)))
    atomic_write_text(out / REMOVAL_CSV, _csv_text(["ImageID"], [[layout.image_id[i]] for i in removed]))
    for task, classes, labels in (("1", task1, labels1), ("2", task2, labels2)):
        atomic_write_text(out / TEST_CSVS[task], _csv_text(ID_COLUMNS, _id_rows(layout, images["test"])))
        atomic_write_text(out / HELD_LABELS[task], _csv_text(ID_COLUMNS + classes,
                                                             _id_rows(layout, images["test"], labels)))
        atomic_write_text(out / CLASS_FILES[task], "\n".join(classes) + "\n")
    both = np.concatenate([labels1, labels2], axis=1)
    atomic_write_text(out / METADATA_CSV, metadata_csv(layout, both, task1 + task2))
    return {"removed": int(len(removed)), **{f"{name}_images": int(len(rows)) for name, rows in images.items()},
            "positive_studies": {c: int(v) for c, v in zip(task1 + task2, both.sum(axis=0))}}
