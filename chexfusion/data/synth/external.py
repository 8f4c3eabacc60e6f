"""A synthetic external set in the NIH ChestX-ray14 format, for noisy-student self-training.

Drawn from the same generative model as the CXR-LT splits (all latent
findings are drawn and rendered) but from other patients, frontal images only
(NIH has no laterals), with NIH's 14 labels written: the other findings are
in the pictures without a label, which is exactly the situation the teacher's
pseudo-labels are meant to fill.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from .cohort import patient_ages
from .labels import FACTORS, LATENT, draw_study_labels, label_model

# NIH label -> the latent finding it reports.
NIH_LABELS = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
    "Infiltration": "Infiltration", "Mass": "Mass", "Nodule": "Nodule", "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation", "Edema": "Edema", "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis", "Pleural_Thickening": "Pleural Thickening", "Hernia": "Hernia",
}
NO_FINDING = "No Finding"
NIH_AP_SHARE = 0.40  # NIH ChestX-ray14: about 60% PA, 40% AP
# The NIH CSV header really splits these two fields with commas inside the names.
NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]


@dataclass
class ExternalSet:
    patient_id: np.ndarray  # per patient (1, 2, ... like NIH)
    sex: np.ndarray
    image_patient: np.ndarray  # per image
    follow_up: np.ndarray
    age: np.ndarray
    portable: np.ndarray
    drawn: np.ndarray  # rendered latent findings
    labels: np.ndarray  # true latent labels

    def image_index(self, i: int) -> str:
        return f"{self.patient_id[self.image_patient[i]]:08d}_{self.follow_up[i]:03d}.png"

    def finding_labels(self, i: int) -> str:
        names = sorted(nih for nih, latent in NIH_LABELS.items() if self.labels[i, LATENT.index(latent)])
        return "|".join(names) if names else NO_FINDING


def build_external(seed: int, n_images: int) -> ExternalSet:
    rng = np.random.default_rng([seed, 2])
    counts = []
    while sum(counts) < n_images:
        counts.append(int(min(rng.geometric(0.3), 20)))
    if counts:
        counts[-1] -= sum(counts) - n_images
    counts = np.array([c for c in counts if c > 0], dtype=np.int64)
    image_patient = np.repeat(np.arange(len(counts)), counts)
    follow_up = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
    labels, drawn, _normal, factors, age_factor = draw_study_labels(label_model("cxr-lt-2024"), rng,
                                                                    image_patient, len(counts))
    age = np.minimum(patient_ages(age_factor)[image_patient] + follow_up // 3, 99)
    critical = factors[:, FACTORS.index("critical")]
    portable = (0.6 * critical + 0.8 * rng.standard_normal(n_images)) > ndtri(1 - NIH_AP_SHARE)
    sex = np.where(rng.random(len(counts)) < 0.56, "M", "F")
    return ExternalSet(np.arange(1, len(counts) + 1), sex, image_patient, follow_up, age, portable, drawn, labels)


def nih_csv(ext: ExternalSet, seed: int) -> str:
    """Data_Entry_2017.csv content (original sizes and spacings drawn like NIH's)."""
    rng = np.random.default_rng([seed, 4])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(NIH_COLUMNS)
    for i in range(len(ext.image_patient)):
        width, height = (int(v) for v in rng.integers(2048, 3057, size=2))
        spacing = float(rng.choice([0.139, 0.143, 0.168]))
        writer.writerow([ext.image_index(i), ext.finding_labels(i), int(ext.follow_up[i]),
                         int(ext.patient_id[ext.image_patient[i]]), int(ext.age[i]), ext.sex[ext.image_patient[i]],
                         "AP" if ext.portable[i] else "PA", width, height, spacing, spacing])
    return out.getvalue()
