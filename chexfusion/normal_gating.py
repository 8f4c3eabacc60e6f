"""Normal gating at inference, as the CXR-LT 2026 Task 1 winner applied it: a confident ``Normal`` turns the
findings down.

``q_c = p_c * (1 - p_Normal) ** alpha`` for every class but ``Normal`` (which keeps its probability). ``alpha = 0``
is off (the default); ``alpha = 1`` scales each finding by the probability that the study is abnormal. Findings
and Normal exclude each other in the CXR-LT labels, so a model sure of Normal should not also be sure of a finding;
the gate enforces it after the fact without retraining.
"""

from __future__ import annotations

import numpy as np

from .errors import UserError

NORMAL_CLASS = "Normal"


def normal_gate(probs: np.ndarray, classes: list[str], alpha: float, normal_class: str = NORMAL_CLASS) -> np.ndarray:
    """Probabilities [N, K] gated by the ``normal_class`` column (a copy; the input is not changed)."""
    if alpha < 0:
        raise UserError(f"normal gating alpha must be >= 0, got {alpha}")
    probs = np.array(probs, dtype=np.float64, copy=True)
    if alpha == 0:
        return probs
    if normal_class not in classes:
        raise UserError(f"normal gating needs a '{normal_class}' class; the model scores {len(classes)} others")
    k = classes.index(normal_class)
    gate = (1.0 - probs[:, k : k + 1]) ** alpha
    others = np.arange(probs.shape[1]) != k
    probs[:, others] *= gate
    return probs
