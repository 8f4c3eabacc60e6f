"""Per-class temperature scaling: probabilities that mean what they say, with every ranking unchanged.

A long-tail model trained with asymmetric or re-weighted losses is ranked well
but its probabilities are not frequencies (mECE, a CXR-LT metric). For each
class ``k`` one temperature ``T_k`` is fitted on the validation split by
minimising the binary cross-entropy of ``sigmoid(logit(p) / T_k)`` (Guo et al.
2017, per class as in multi-label work); dividing a logit by a positive number
keeps each class's ranking, so AUROC and AP do not move. A class with no
positive or no negative validation label keeps ``T = 1``. Class names a
text-query run was not trained on (zero-shot) get the median of the trained
classes' temperatures: the only fit there is for them.

The fit is stored in the run folder (``calibration.json``) by
``chexfusion calibrate`` and applied by predict, the web demo and the Python
API unless raw probabilities are asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import atomic_write_json

FILE = "calibration.json"
LOG_T_BOUNDS = (-3.0, 3.0)  # temperatures between e^-3 and e^3
_EPS = 1e-7


def _logits(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def scale(probs: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """``sigmoid(logit(probs) / T)`` per column, in the dtype of ``probs``."""
    scaled = 1.0 / (1.0 + np.exp(-_logits(probs) / np.asarray(temperatures, dtype=np.float64)))
    return scaled.astype(np.asarray(probs).dtype, copy=False)


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the mean binary cross-entropy of one class (1 without both labels)."""
    from scipy.optimize import minimize_scalar

    targets = np.asarray(targets, dtype=np.float64)
    if targets.size == 0 or targets.min() == targets.max():
        return 1.0
    z = _logits(probs)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - targets * s))  # -log sigmoid(s) for y=1, -log(1-sigmoid) for 0

    return float(np.exp(minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded").x))


@dataclass
class Calibration:
    """Fitted temperatures by class name, and the one for names the fit did not see."""

    temperatures: dict[str, float]
    default: float
    fitted_on: str  # the CSV the fit used

    @classmethod
    def fit(cls, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, classes: list[str],
            fitted_on: str) -> "Calibration":
        temps = {}
        for k, c in enumerate(classes):
            scored = mask[:, k] > 0
            temps[c] = fit_temperature(probs[scored, k], targets[scored, k])
        return cls(temps, float(np.median(list(temps.values()))), str(fitted_on))

    def for_classes(self, names: list[str]) -> np.ndarray:
        return np.array([self.temperatures.get(n, self.default) for n in names], dtype=np.float64)

    def save(self, run_dir: Path, report: dict) -> None:
        atomic_write_json(Path(run_dir) / FILE, {"method": "temperature", "fitted_on": self.fitted_on,
                                                 "default_temperature": self.default,
                                                 "temperatures": self.temperatures, **report})

    @classmethod
    def load(cls, run_dir: Path, classes: list[str]) -> "Calibration | None":
        """The run's fit, checked against its classes; None when the run was never calibrated."""
        path = Path(run_dir) / FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            temps = {str(k): float(v) for k, v in data["temperatures"].items()}
            default = float(data["default_temperature"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{path} is damaged ({type(exc).__name__}: {exc}): "
                            "run chexfusion calibrate again") from None
        bad = [c for c, t in temps.items() if not (np.isfinite(t) and t > 0)]
        if sorted(temps) != sorted(classes) or bad or not (np.isfinite(default) and default > 0):
            raise UserError(f"{path} does not fit this run's classes (or holds a non-positive temperature): "
                            "run chexfusion calibrate again")
        return cls(temps, default, str(data.get("fitted_on", "")))
