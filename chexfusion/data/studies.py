"""Studies (all images of one exam) and patient-level splits.

A study can have any number of images (CXR-LT has 1 to 11), so a study is an
array of row indices, never a fixed number of slots. The images of a study are
put in a canonical order -- frontal, then lateral, then unknown, ties broken by
``dicom_id`` -- so that anything computed from a study is reproducible and does
not depend on the order of the CSV rows.

Splits are drawn per patient: images of one patient are strongly correlated,
and a patient in both train and test inflates every metric.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import UserError
from .views import UNKNOWN, VIEW_INDEX, view_of_row


def _view_rank(frame: pd.DataFrame) -> np.ndarray:
    """frontal 0, lateral 1, unknown 2 per row (from the ``view`` column, else from ViewPosition)."""
    if "view" in frame:
        views = frame["view"]
    else:
        blank = [None] * len(frame)
        positions = frame["ViewPosition"].tolist() if "ViewPosition" in frame else blank
        meanings = frame["ViewCodeSequence_CodeMeaning"].tolist() if "ViewCodeSequence_CodeMeaning" in frame else blank
        views = pd.Series([view_of_row(p, m) for p, m in zip(positions, meanings)], dtype=object)
    return views.map(VIEW_INDEX).fillna(VIEW_INDEX[UNKNOWN]).to_numpy(dtype=np.int64)


def _id_rank(ids: pd.Series) -> np.ndarray:
    """Integer rank of each id in sorted order (sorting ints is much faster than sorting strings)."""
    return pd.factorize(ids, sort=True)[0]


def canonical_order(frame: pd.DataFrame, rows) -> np.ndarray:
    """``rows`` sorted frontal first, then lateral, then unknown; ties by ``dicom_id``."""
    rows = np.asarray(rows, dtype=np.int64)
    ranks = _view_rank(frame.iloc[rows])
    ids = _id_rank(frame["dicom_id"].iloc[rows])
    return rows[np.lexsort((ids, ranks))]


def group_studies(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """study_id -> row indices in canonical order; studies in order of first appearance."""
    if len(frame) == 0:
        return {}
    study_codes, study_ids = pd.factorize(frame["study_id"])
    ranks = _view_rank(frame)
    ids = _id_rank(frame["dicom_id"])
    order = np.lexsort((ids, ranks, study_codes))
    bounds = np.flatnonzero(np.diff(study_codes[order])) + 1
    # Sorted by study code first, so the k-th chunk is the study with code k.
    return dict(zip(study_ids.to_numpy(dtype=object).tolist(), np.split(order, bounds)))


def study_sizes(frame: pd.DataFrame) -> dict[int, int]:
    """Images per study -> number of studies with that many, smallest size first."""
    counts = frame["study_id"].value_counts().value_counts()
    return {int(size): int(n) for size, n in sorted(counts.items())}


def _split_counts(n_subjects: int, fractions: np.ndarray) -> np.ndarray:
    """Subjects per split: largest remainder, and at least one per split when there are enough subjects."""
    exact = fractions * n_subjects
    counts = np.floor(exact).astype(np.int64)
    shortfall = n_subjects - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:shortfall]] += 1
    if n_subjects >= len(counts):
        for k in np.flatnonzero(counts == 0):
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    return counts


def patient_split(subject_ids: Sequence[str], fractions: dict[str, float], seed: int) -> np.ndarray:
    """Split name per row, all rows of a subject in the same split.

    ``fractions`` (e.g. ``{"train": 0.7, "development": 0.1, "test": 0.2}``) are
    fractions of subjects and must sum to 1. The result depends only on the set
    of subject ids and the seed, not on the row order.
    """
    if not fractions:
        raise UserError("patient split: no splits given")
    names = list(fractions)
    shares = np.array([fractions[n] for n in names], dtype=np.float64)
    if (shares < 0).any() or not np.isfinite(shares).all():
        raise UserError(f"patient split: fractions must be non-negative numbers, got {fractions}")
    if abs(shares.sum() - 1.0) > 1e-6:
        raise UserError(f"patient split: fractions must sum to 1, got {shares.sum():g} ({fractions})")
    subjects = pd.Series([str(s).strip() for s in subject_ids], dtype="str")
    blank = np.flatnonzero((subjects == "").to_numpy())
    if len(blank):
        raise UserError(
            f"patient split: subject_id is empty for {len(blank)} rows (first: row {blank[0]}); "
            "a patient-level split needs it"
        )
    codes, uniques = pd.factorize(subjects, sort=True)
    order = np.random.default_rng(seed).permutation(len(uniques))
    counts = _split_counts(len(uniques), shares)
    split_of_subject = np.empty(len(uniques), dtype=object)
    split_of_subject[order] = np.repeat(np.array(names, dtype=object), counts)
    return split_of_subject[codes]
