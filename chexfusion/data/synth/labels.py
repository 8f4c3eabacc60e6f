"""Which findings a synthetic study has: a latent "liability" model.

Each study has a few latent disease factors (age, heart failure, infection,
critical illness, trauma, neoplasm, chronic lung disease, granulomatous
disease, pulmonary vascular disease), each a standard normal. A finding's
liability is a weighted sum of the factors it belongs to plus its own noise,
and the finding is present when the liability crosses a threshold. Shared
factors make findings co-occur the way they do clinically (edema with
cardiomegaly and effusion, devices with atelectasis and effusion in the
critically ill, more findings in older patients) while each marginal
prevalence stays under control: the thresholds are calibrated so the
prevalences follow the real CXR-LT training counts.

On top of that:

- Normal (CXR-LT 2024) / No Finding (2023) is drawn first and excludes every
  finding. For 2024 that includes Support Devices; for 2023 "No Finding"
  follows the CheXpert labeller's convention that devices are not a finding,
  so a No Finding study may still carry Support Devices.
- Every abnormal study has at least one finding (the one closest to its
  threshold if none crossed it).
- Implications: Hydropneumothorax usually also has Pneumothorax and Pleural
  Effusion, Lobar and Round(ed) Atelectasis usually Atelectasis, Rib and
  Clavicle Fracture usually Fracture. An implied label is a label only: the
  image already shows it through the child's signature.
- Persistence: a patient's factors and chronic findings (anatomical variants,
  calcifications, kyphosis...) carry over between their studies.
- Rare classes get a prevalence floor (PREVALENCE_FLOOR) and, per split, a
  minimum number of positive studies (see :func:`enforce_floor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import ndtri

from ...resources import read_table
from ..classes import label_set
from .findings import NORMAL_CLASSES, SIGNATURES

FACTORS = ("age", "cardiac", "infection", "critical", "trauma", "neoplasm", "chronic_lung", "granulomatous",
           "vascular")

# Disease clusters: how strongly each finding depends on each latent factor.
LOADINGS: dict[str, dict[str, float]] = {
    "Adenopathy": {"neoplasm": 0.55, "granulomatous": 0.3},
    "Atelectasis": {"critical": 0.45, "infection": 0.3, "age": 0.15},
    "Azygos Lobe": {},
    "Calcification of the Aorta": {"age": 0.6},
    "Cardiomegaly": {"cardiac": 0.65, "age": 0.3},
    "Clavicle Fracture": {"trauma": 0.7},
    "Consolidation": {"infection": 0.6, "critical": 0.2},
    "Edema": {"cardiac": 0.55, "critical": 0.35},
    "Emphysema": {"chronic_lung": 0.65, "age": 0.25},
    "Enlarged Cardiomediastinum": {"cardiac": 0.5, "age": 0.2, "critical": 0.15},
    "Fibrosis": {"chronic_lung": 0.5, "age": 0.3},
    "Fissure": {"cardiac": 0.3, "infection": 0.15},
    "Fracture": {"trauma": 0.7, "age": 0.2},
    "Granuloma": {"granulomatous": 0.6, "age": 0.2},
    "Hernia": {"age": 0.5},
    "Hydropneumothorax": {"trauma": 0.3, "critical": 0.3, "neoplasm": 0.2},
    "Infarction": {"vascular": 0.55, "critical": 0.2},
    "Infiltration": {"infection": 0.5},
    "Kyphosis": {"age": 0.55},
    "Lobar Atelectasis": {"critical": 0.35, "neoplasm": 0.3},
    "Lung Lesion": {"neoplasm": 0.55, "granulomatous": 0.25},
    "Lung Opacity": {"infection": 0.55, "critical": 0.3},
    "Mass": {"neoplasm": 0.7},
    "Nodule": {"neoplasm": 0.5, "granulomatous": 0.3},
    "Pleural Effusion": {"cardiac": 0.5, "critical": 0.3, "neoplasm": 0.15},
    "Pleural Other": {"chronic_lung": 0.25, "age": 0.25},
    "Pleural Thickening": {"age": 0.3, "chronic_lung": 0.25, "granulomatous": 0.2},
    "Pneumomediastinum": {"trauma": 0.45, "critical": 0.35},
    "Pneumonia": {"infection": 0.7},
    "Pneumoperitoneum": {"critical": 0.4},
    "Pneumothorax": {"trauma": 0.45, "critical": 0.35, "chronic_lung": 0.2},
    "Pulmonary Embolism": {"vascular": 0.65},
    "Pulmonary Hypertension": {"cardiac": 0.35, "vascular": 0.35, "chronic_lung": 0.3},
    "Rib Fracture": {"trauma": 0.75},
    "Round(ed) Atelectasis": {"chronic_lung": 0.3, "age": 0.3},
    "Subcutaneous Emphysema": {"trauma": 0.5, "critical": 0.4},
    "Support Devices": {"critical": 0.75},
    "Tortuous Aorta": {"age": 0.6},
    "Tuberculosis": {"granulomatous": 0.65},
}
NORMAL_LOADINGS = {"age": -0.35, "cardiac": -0.3, "infection": -0.3, "critical": -0.45}

# Share of a finding's own noise that belongs to the patient rather than the study.
PERSISTENCE = {"Azygos Lobe": 1.0, "Kyphosis": 0.9, "Granuloma": 0.9, "Calcification of the Aorta": 0.9,
               "Tortuous Aorta": 0.9, "Hernia": 0.8, "Emphysema": 0.8, "Fibrosis": 0.8, "Pleural Other": 0.8,
               "Pleural Thickening": 0.7, "Cardiomegaly": 0.6}
DEFAULT_PERSISTENCE = 0.3
FACTOR_PERSISTENCE = 0.5  # share of each disease factor that is the patient's (age: all of it)

IMPLIES = {
    "Hydropneumothorax": (("Pneumothorax", 0.8), ("Pleural Effusion", 0.6)),
    "Lobar Atelectasis": (("Atelectasis", 0.8),),
    "Round(ed) Atelectasis": (("Atelectasis", 0.7),),
    "Rib Fracture": (("Fracture", 0.7),),
    "Clavicle Fracture": (("Fracture", 0.7),),
}

PREVALENCE_FLOOR = 0.005  # every class is at least this frequent (0.5% of studies) before the split floor
MIN_POSITIVE_STUDIES = 3  # per class and split (smaller for tiny splits, see enforce_floor)
DEVICES_WITH_NO_FINDING = 0.12  # CXR-LT 2023 convention: "No Finding" may still have Support Devices
CALIBRATION_SEED = 20240917
CALIBRATION_STUDIES = 100_000


def total_training_images() -> int:
    """Images in the CXR-LT 2024 training CSV: the denominator of the class prevalences."""
    return sum(int(r["train_images_2024"]) for r in read_table("view_positions_2024.csv"))


LATENT = tuple(sorted(SIGNATURES))  # every finding the generator can draw, whatever the label set


@dataclass(frozen=True)
class LabelModel:
    """Calibrated thresholds for one label set."""

    label_set: str
    classes: tuple  # written classes, in the label set's order
    normal_class: str
    target: dict  # class -> target prevalence (studies)
    thresholds: np.ndarray  # per LATENT finding, on its liability among abnormal studies
    normal_threshold: float
    devices_with_normal: float


@lru_cache(maxsize=None)
def loading_matrix() -> np.ndarray:
    mat = np.zeros((len(LATENT), len(FACTORS)))
    for i, name in enumerate(LATENT):
        for factor, value in LOADINGS[name].items():
            mat[i, FACTORS.index(factor)] = value
    assert np.all((mat ** 2).sum(1) < 1), "a finding's loadings must leave room for its own noise"
    return mat


def normal_loadings() -> np.ndarray:
    return np.array([NORMAL_LOADINGS.get(f, 0.0) for f in FACTORS])


def target_prevalences(name: str) -> tuple[dict, str]:
    """Class -> target prevalence for a label set, and the name of its "normal" class."""
    total = total_training_images()
    classes = label_set(name)
    counts = {c.name: c.train_images for c in classes}
    reference = {c.name: c.train_images for c in label_set("cxr-lt-2024")}
    normal = next(c.name for c in classes if c.name in NORMAL_CLASSES)
    target = {}
    for finding in LATENT:
        count = counts.get(finding, reference[finding])
        target[finding] = max(count / total, PREVALENCE_FLOOR)
    target[normal] = counts[normal] / total
    return target, normal


def assign(model_thresholds, normal_threshold, factors, noise, normal_noise, uniforms, devices_with_normal):
    """Labels from latent draws (vectorised; shared by calibration and generation).

    factors: (n, F) disease factors; noise: (n, C) each finding's own standard
    normal noise; normal_noise: (n,); uniforms: (n, C + 1) for implications and
    devices on normal studies. Returns (labels, drawn, normal) boolean arrays:
    ``drawn`` are the findings whose signature is rendered, ``labels`` adds the
    implied ones.
    """
    load = loading_matrix()
    own = np.sqrt(1 - (load ** 2).sum(1))
    liability = factors @ load.T + noise * own
    nl = normal_loadings()
    normal = (factors @ nl + normal_noise * np.sqrt(1 - (nl ** 2).sum())) > normal_threshold
    margin = liability - model_thresholds
    drawn = margin > 0
    empty = ~drawn.any(1) & ~normal
    drawn[np.flatnonzero(empty), margin[empty].argmax(1)] = True
    drawn[normal] = False
    devices = LATENT.index("Support Devices")
    drawn[normal, devices] = (uniforms[normal, -1] < devices_with_normal)
    labels = drawn.copy()
    for child, parents in IMPLIES.items():
        c = LATENT.index(child)
        for parent, prob in parents:
            p = LATENT.index(parent)
            labels[:, p] |= labels[:, c] & (uniforms[:, p] < prob)
    return labels, drawn, normal


@lru_cache(maxsize=None)
def label_model(name: str) -> LabelModel:
    """Calibrate the thresholds so the marginal prevalences hit their targets.

    The simulation uses a fixed seed, so the thresholds are the same on every run.
    """
    target, normal_class = target_prevalences(name)
    rng = np.random.default_rng(CALIBRATION_SEED)
    n = CALIBRATION_STUDIES
    factors = rng.standard_normal((n, len(FACTORS)))
    noise = rng.standard_normal((n, len(LATENT)))
    normal_noise = rng.standard_normal(n)
    uniforms = rng.random((n, len(LATENT) + 1))
    p_normal = target[normal_class]
    normal_threshold = float(ndtri(1 - p_normal))
    devices_with_normal = DEVICES_WITH_NO_FINDING if normal_class == "No Finding" else 0.0
    goal = np.array([target[f] for f in LATENT])
    draw_p = np.clip(goal / (1 - p_normal), 1e-5, 0.95)
    for _ in range(6):
        thresholds = ndtri(1 - draw_p)
        labels, _, _ = assign(thresholds, normal_threshold, factors, noise, normal_noise, uniforms,
                              devices_with_normal)
        measured = np.maximum(labels.mean(0), 1e-6)
        draw_p = np.clip(draw_p * goal / measured, 1e-5, 0.95)
    classes = tuple(c.name for c in label_set(name))
    return LabelModel(name, classes, normal_class, target, ndtri(1 - draw_p), normal_threshold, devices_with_normal)


def draw_latent(rng: np.random.Generator, patient_of_study: np.ndarray, n_patients: int):
    """Factors and noises with the patient-level persistence built in."""
    n = len(patient_of_study)
    g = rng.standard_normal((n_patients, len(FACTORS)))
    h = rng.standard_normal((n, len(FACTORS)))
    rho = np.full(len(FACTORS), FACTOR_PERSISTENCE)
    rho[FACTORS.index("age")] = 1.0
    factors = np.sqrt(rho) * g[patient_of_study] + np.sqrt(1 - rho) * h
    own_p = rng.standard_normal((n_patients, len(LATENT)))
    own_s = rng.standard_normal((n, len(LATENT)))
    keep = np.array([PERSISTENCE.get(f, DEFAULT_PERSISTENCE) for f in LATENT])
    noise = np.sqrt(keep) * own_p[patient_of_study] + np.sqrt(1 - keep) * own_s
    normal_noise = rng.standard_normal(n)
    uniforms = rng.random((n, len(LATENT) + 1))
    return factors, noise, normal_noise, uniforms, g[:, FACTORS.index("age")]


def draw_study_labels(model: LabelModel, rng: np.random.Generator, patient_of_study, n_patients):
    """(labels, drawn, normal, factors, patient age factor) for a set of studies."""
    factors, noise, normal_noise, uniforms, age_factor = draw_latent(rng, patient_of_study, n_patients)
    labels, drawn, normal = assign(model.thresholds, model.normal_threshold, factors, noise, normal_noise,
                                   uniforms, model.devices_with_normal)
    return labels, drawn, normal, factors, age_factor


def floor_for(split_size: int) -> int:
    """Positive studies every class gets in a split: 3, fewer only for splits under 12 studies."""
    return int(min(MIN_POSITIVE_STUDIES, max(1, split_size // 4)))


def enforce_floor(model: LabelModel, labels, drawn, normal, split, rng: np.random.Generator) -> dict:
    """Give every written class its minimum of positive studies in every split.

    Normal studies are added first (by clearing the abnormal study with the
    fewest findings), then each finding is added to random abnormal studies
    that lack it. Returns the number of studies changed per class, for the
    metadata. Arrays are modified in place.
    """
    written = [c for c in model.classes if c != model.normal_class]
    added = {c: 0 for c in model.classes}
    for s in sorted(set(split.tolist())):
        members = np.flatnonzero(split == s)
        need = floor_for(len(members))
        missing = need - int(normal[members].sum())
        if missing > 0:
            pool = members[~normal[members]]
            order = pool[np.lexsort((rng.random(len(pool)), labels[pool].sum(1)))]
            chosen = order[:missing]
            normal[chosen] = True
            labels[chosen] = False
            drawn[chosen] = False
            added[model.normal_class] += len(chosen)
        for name in written:
            c = LATENT.index(name)
            missing = need - int(labels[members, c].sum())
            if missing <= 0:
                continue
            pool = members[~normal[members] & ~labels[members, c]]
            chosen = rng.choice(pool, size=min(missing, len(pool)), replace=False)
            labels[chosen, c] = True
            drawn[chosen, c] = True
            added[name] += len(chosen)
    return added


def written_labels(model: LabelModel, labels, normal) -> np.ndarray:
    """The label set's columns (0/1) for each study."""
    out = np.zeros((len(normal), len(model.classes)), dtype=np.int8)
    for j, name in enumerate(model.classes):
        out[:, j] = normal if name == model.normal_class else labels[:, LATENT.index(name)]
    return out


def add_label_noise(written: np.ndarray, rows: np.ndarray, probability: float, rng: np.random.Generator) -> int:
    """Flip each label of the given study rows with ``probability``; returns the number of flips."""
    if probability <= 0:
        return 0
    flips = rng.random((len(rows), written.shape[1])) < probability
    written[rows] ^= flips.astype(written.dtype)
    return int(flips.sum())
