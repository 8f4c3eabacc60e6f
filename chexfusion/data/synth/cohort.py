"""The synthetic CXR-LT cohort: patients, studies, splits, images and view codes.

Shapes follow the shipped reference tables of the CXR-LT 2024 training set:

- images per study from ``study_sizes_2024.csv`` (1 to 11), with at least two
  studies of five or more images once there are 100 studies, so code that
  assumes at most four images per study is caught even on small datasets;
- view codes from ``view_positions_2024.csv`` (AP, PA, LATERAL, LL, the rare
  codes, and ~4% blank = unknown). A study's first image is a frontal picture,
  the second usually a lateral; a blank code hides the view from the CSV but
  the picture is still a frontal or a lateral one;
- AP (bedside) films are more likely for single-image studies and for the
  critically ill, PA for the frontal + lateral pairs of ambulant patients;
- patients have one or more studies (geometric, mean 2.4); the 70/10/20
  split is made over patients, so no subject is in two splits;
- ids look like MIMIC-CXR's: 8-digit subject and study ids, 44-character
  dicom ids, ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg`` paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from ...resources import read_table
from .labels import FACTORS, LabelModel, add_label_noise, draw_study_labels, enforce_floor, written_labels

SPLITS = ("train", "development", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
            "LAO": "left anterior oblique", "RAO": "right anterior oblique", "AP AXIAL": "antero-posterior",
            "AP LLD": "antero-posterior", "AP RLD": "antero-posterior", "PA LLD": "postero-anterior",
            "PA RLD": "postero-anterior", "XTABLE LATERAL": "lateral", "SWIMMERS": "lateral"}
AP_PROBABILITY = {1: 0.85, 2: 0.42}  # P(AP film) for single-image studies / larger ones (gives ~60% AP overall)
SECOND_IMAGE_LATERAL = 0.9
EXTRA_IMAGE_LATERAL = 0.35
LATERAL_ONLY_STUDY = 0.01
MIN_STUDIES = 20


@dataclass
class Cohort:
    """Everything about the dataset except the pixels (arrays indexed by patient / study / image)."""

    model: LabelModel
    subject_id: np.ndarray  # per patient
    sex: np.ndarray
    study_patient: np.ndarray  # per study
    study_id: np.ndarray
    study_split: np.ndarray  # index into SPLITS
    study_age: np.ndarray
    study_portable: np.ndarray
    labels: np.ndarray  # (studies, latent findings) true labels
    drawn: np.ndarray  # (studies, latent findings) rendered signatures
    normal: np.ndarray
    written: np.ndarray  # (studies, classes) the CSV labels (after the floor and any label noise)
    image_study: np.ndarray  # per image
    image_content: list  # frontal / lateral picture
    image_code: list  # ViewPosition ("" = unknown)
    dicom_id: list
    floor_added: dict
    noise_flips: int

    def fpath(self, i: int) -> str:
        s = self.image_study[i]
        subject = str(self.subject_id[self.study_patient[s]])
        return f"files/p{subject[:2]}/p{subject}/s{self.study_id[s]}/{self.dicom_id[i]}.jpg"


def unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """``n`` distinct integers in [low, high), in random order."""
    return low + rng.choice(high - low, size=n, replace=False)


def dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    words = rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64)
    ids = ["-".join(f"{int(w):08x}" for w in row) for row in words]
    if len(set(ids)) != n:  # 160 random bits: practically impossible, but never write a duplicate
        raise RuntimeError("dicom id collision; use another seed")
    return ids


def studies_per_patient(rng: np.random.Generator, n_studies: int) -> np.ndarray:
    counts = []
    while sum(counts) < n_studies:
        counts.append(int(min(rng.geometric(0.42), 12)))
    counts[-1] -= sum(counts) - n_studies
    return np.array([c for c in counts if c > 0])


def assign_splits(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Split patients so each split gets about its share of *studies* (patient-level split)."""
    order = rng.permutation(len(counts))
    goal = np.array(SPLIT_FRACTIONS) * counts.sum()
    got = np.zeros(len(SPLITS))
    split = np.zeros(len(counts), dtype=np.int64)
    for k, p in enumerate(order):
        empty = np.flatnonzero(got == 0)
        remaining = len(order) - k
        if len(empty) and remaining <= len(empty):
            s = empty[0]  # tiny cohorts: make sure no split is left without patients
        else:
            s = int(np.argmax(goal - got))
        split[p] = s
        got[s] += counts[p]
    return split


def study_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    table = read_table("study_sizes_2024.csv")
    sizes = np.array([int(r["images_per_study"]) for r in table])
    freq = np.array([float(r["train_studies_2024"]) for r in table])
    drawn = rng.choice(sizes, size=n, p=freq / freq.sum())
    big = sizes >= 5
    want = max(int(round(n * freq[big].sum() / freq.sum())), 2 if n >= 100 else 0)
    have = int((drawn >= 5).sum())
    if have < want:
        small = np.flatnonzero(drawn < 5)
        pick = rng.choice(small, size=want - have, replace=False)
        drawn[pick] = rng.choice(sizes[big], size=len(pick), p=freq[big] / freq[big].sum())
    return drawn


def view_code_tables():
    """Code frequencies within frontal and lateral pictures, and the share of blank codes."""
    rows = read_table("view_positions_2024.csv")
    total = sum(int(r["train_images_2024"]) for r in rows)
    blank = sum(int(r["train_images_2024"]) for r in rows if not r["ViewPosition"].strip())
    tables = {}
    for view in ("frontal", "lateral"):
        codes = [(r["ViewPosition"], int(r["train_images_2024"])) for r in rows if r["view"] == view]
        tables[view] = ([c for c, _ in codes], np.array([n for _, n in codes], dtype=float))
    return tables, blank / total


def draw_views(rng: np.random.Generator, sizes: np.ndarray, portable: np.ndarray):
    """Picture content and ViewPosition code of every image, study by study."""
    tables, blank = view_code_tables()
    f_codes, f_freq = tables["frontal"]
    rare_frontal = np.array([c not in ("AP", "PA") for c in f_codes])
    l_codes, l_freq = tables["lateral"]
    image_study, content, codes = [], [], []
    for s, size in enumerate(sizes):
        views = ["lateral" if rng.random() < LATERAL_ONLY_STUDY else "frontal"]
        for k in range(1, size):
            p_lat = SECOND_IMAGE_LATERAL if k == 1 else EXTRA_IMAGE_LATERAL
            views.append("lateral" if rng.random() < p_lat else "frontal")
        for v in rng.permutation(views):
            if v == "frontal":
                code = "AP" if portable[s] else "PA"
                if rng.random() < f_freq[rare_frontal].sum() / f_freq.sum():
                    code = str(rng.choice(np.array(f_codes)[rare_frontal],
                                          p=f_freq[rare_frontal] / f_freq[rare_frontal].sum()))
            else:
                code = str(rng.choice(l_codes, p=l_freq / l_freq.sum()))
            if rng.random() < blank:
                code = ""
            image_study.append(s)
            content.append(str(v))
            codes.append(code)
    return np.array(image_study), content, codes


def portable_films(rng: np.random.Generator, critical: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """AP bedside films: more likely for sicker patients and single-image studies."""
    p = np.where(sizes <= 1, AP_PROBABILITY[1], AP_PROBABILITY[2])
    liability = 0.6 * critical + 0.8 * rng.standard_normal(len(sizes))
    return liability > ndtri(1 - p)


def patient_ages(age_factor: np.ndarray) -> np.ndarray:
    return np.clip(np.round(62 + 17 * age_factor), 18, 95)


def build_cohort(seed: int, n_studies: int, model: LabelModel, label_noise: float = 0.0) -> Cohort:
    rng = np.random.default_rng([seed, 1])
    counts = studies_per_patient(rng, n_studies)
    n_patients = len(counts)
    study_patient = np.repeat(np.arange(n_patients), counts)
    patient_split = assign_splits(rng, counts)
    study_split = patient_split[study_patient]
    subject_id = unique_ids(rng, n_patients, 10_000_000, 20_000_000)
    sex = np.where(rng.random(n_patients) < 0.52, "M", "F")
    study_id = unique_ids(rng, n_studies, 50_000_000, 60_000_000)

    labels, drawn, normal, factors, age_factor = draw_study_labels(model, rng, study_patient, n_patients)
    order_in_patient = np.concatenate([np.arange(c) for c in counts])
    study_age = np.minimum(patient_ages(age_factor)[study_patient] + order_in_patient, 99)
    floor_added = enforce_floor(model, labels, drawn, normal, study_split, rng)
    written = written_labels(model, labels, normal)
    train_rows = np.flatnonzero(study_split == SPLITS.index("train"))
    flips = add_label_noise(written, train_rows, label_noise, np.random.default_rng([seed, 3]))

    sizes = study_sizes(rng, n_studies)
    portable = portable_films(rng, factors[:, FACTORS.index("critical")], sizes)
    image_study, content, codes = draw_views(rng, sizes, portable)
    return Cohort(model, subject_id, sex, study_patient, study_id, study_split, study_age, portable, labels, drawn,
                  normal, written, image_study, content, codes, dicom_ids(rng, len(image_study)), floor_added, flips)
