"""CheXpert-style label values and the policy that turns them into targets.

Label columns hold ``1`` (present), ``0`` (absent), ``-1`` (uncertain: the
report hedged) or a blank (not mentioned). Which of the last two count as
positive, negative or "no information" is a modelling choice that changes the
results (the CheXpert paper compares U-Zeros, U-Ones and U-Ignore), so it is a
config value rather than a decision buried in the reader. ``ignore`` yields a
mask of zeros that every loss in the project multiplies in, so an ignored entry
contributes no gradient instead of being treated as a negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
CHOICES = ("zero", "one", "ignore")


@dataclass
class LabelPolicy:
    """How uncertain (-1) and blank (NaN) labels become training targets."""

    uncertain: str = "zero"  # "zero" | "one" | "ignore"
    blank: str = "zero"  # "zero" | "one" | "ignore"

    def __post_init__(self):
        for key in ("uncertain", "blank"):
            value = getattr(self, key)
            if value not in CHOICES:
                raise UserError(f"label policy '{key}' must be one of {', '.join(CHOICES)}, got '{value}'")


def _fill(targets: np.ndarray, mask: np.ndarray, where: np.ndarray, choice: str) -> None:
    if choice == "one":
        targets[where] = 1.0
    elif choice == "ignore":
        mask[where] = 0.0
    # "zero": targets are already 0 there and the mask stays 1.


def apply_label_policy(raw: np.ndarray, policy: LabelPolicy) -> tuple[np.ndarray, np.ndarray]:
    """raw float [N, C] with NaN for blank -> (targets float32 [N, C] in {0, 1}, mask float32 [N, C]; 0 = ignore)."""
    raw = np.asarray(raw, dtype=np.float32)
    targets = (raw == POSITIVE).astype(np.float32)
    mask = np.ones_like(targets)
    _fill(targets, mask, raw == UNCERTAIN, policy.uncertain)
    _fill(targets, mask, np.isnan(raw), policy.blank)
    return targets, mask
