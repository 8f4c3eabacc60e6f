"""A seeded random split of a table by patient (seed 004's NIH ChestX-ray14 70/10/20 split).

Every image of a patient lands in one split, so no patient's other visits leak from training into validation
or test. Patients, not images, are shuffled (``numpy.random.default_rng(seed)``) and cut at the cumulative
fractions, so the image shares come out near the fractions and the same seed gives the same split anywhere.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def parse_fractions(text: str) -> list[float]:
    """``70,10,20`` (percent or fractions) as fractions summing to 1; anything else is a one-line error."""
    try:
        parts = [float(p) for p in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) < 2 or any(p <= 0 for p in parts) or not np.isfinite(parts).all():
        raise UserError(f"--split must list two or more positive shares, e.g. 70,10,20; got '{text}'")
    total = sum(parts)
    return [p / total for p in parts]


def split_by_patient(patients, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Row indices of each split (in table order) for the rows' patient ids ``patients``."""
    patients = np.asarray(patients).astype(str)
    unique = np.unique(patients)
    if len(unique) < len(fractions):
        raise UserError(f"{len(unique)} patients cannot fill {len(fractions)} splits")
    order = np.random.default_rng(seed).permutation(unique)
    cuts = np.round(np.cumsum(fractions)[:-1] * len(unique)).astype(int)
    split_of = {patient: s for s, group in enumerate(np.split(order, cuts)) for patient in group}
    assigned = np.array([split_of[p] for p in patients])
    return [np.flatnonzero(assigned == s) for s in range(len(fractions))]
