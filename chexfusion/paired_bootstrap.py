"""Paired bootstrap of mAP and the group mAPs between models, and how stable their ranking is.

Every replicate draws studies with replacement (:class:`chexfusion.resampling.StudyResampler`)
and scores *all* models on the same rows, so a difference between two models is
measured on identical test sets and the variation common to both cancels. AP is
``sklearn.metrics.average_precision_score``; in a replicate a class without a
positive is left out of every model's means, exactly as in
:func:`chexfusion.metrics.compute_metrics`, and head / medium / tail stay those of
the full data.

The interval of a difference is the percentile interval of its replicates; its
two-sided p-value is ``2 * min(share of replicates <= 0, share >= 0)`` (capped
at 1), the smallest level at which that percentile interval would exclude 0.

Ranking stability follows the CXR-LT 2023 overview: the rank of each model by mAP
(1 = best; tied models share the best rank) in every replicate, reported as the
share of replicates at each rank.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score

from .metrics import GROUPS, percentile_interval
from .resampling import StudyResampler

MAP_KEYS = ("mAP", *(f"{group}_mAP" for group in GROUPS))


def class_aps(y_true: np.ndarray, y_prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """AP per class over its valid rows; NaN for a class without a positive."""
    out = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        keep = valid[:, k]
        labels = y_true[keep, k]
        if labels.sum() > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[k] = average_precision_score(labels, y_prob[keep, k])
    return out


def map_summary(aps: np.ndarray, groups: list[str | None]) -> dict[str, float]:
    """mAP and each group's mAP from per-class APs (NaN where nothing is scored)."""
    groups = np.asarray(groups, dtype=object)
    out = {"mAP": float(np.nanmean(aps)) if np.isfinite(aps).any() else np.nan}
    for group in GROUPS:
        members = aps[groups == group]
        out[f"{group}_mAP"] = float(np.nanmean(members)) if np.isfinite(members).any() else np.nan
    return out


def bootstrap_maps(y_true, probs: list[np.ndarray], valid, groups, study_ids, n: int, seed: int,
                   progress: bool = False) -> dict[str, np.ndarray]:
    """Replicates of :data:`MAP_KEYS` for every model on the same resamples: {key: [n, models]}."""
    rng = np.random.default_rng(seed)
    resampler = StudyResampler(study_ids, n_rows=len(y_true))
    out = {key: np.full((n, len(probs)), np.nan) for key in MAP_KEYS}
    replicates = range(n)
    if progress:
        from .progress import tqdm

        replicates = tqdm(replicates, desc="paired bootstrap", unit="replicate")
    for r in replicates:
        rows = resampler.draw(rng)
        for m, prob in enumerate(probs):
            summary = map_summary(class_aps(y_true[rows], prob[rows], valid[rows]), groups)
            for key in MAP_KEYS:
                out[key][r, m] = summary[key]
    return out


def paired_difference(point_a: float, point_b: float, replicates_a, replicates_b, level: float = 0.95) -> dict:
    """Difference a - b with its percentile interval and bootstrap p-value (see the module docstring)."""
    if not (np.isfinite(point_a) and np.isfinite(point_b)):
        return {"a": None, "b": None, "diff": None, "ci": None, "p": None, "n_replicates": 0}
    diffs = np.asarray(replicates_a) - np.asarray(replicates_b)
    diffs = diffs[np.isfinite(diffs)]
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))) if diffs.size else None
    return {"a": float(point_a), "b": float(point_b), "diff": float(point_a - point_b),
            "ci": percentile_interval(diffs, level), "p": None if p is None else float(p),
            "n_replicates": int(diffs.size)}


def rank_distribution(points: np.ndarray, replicates: np.ndarray) -> dict:
    """Rank of each model by a higher-is-better metric, on the full data and over the replicates.

    ``points`` [models], ``replicates`` [n, models]. Returns ``rank`` [models] (full data),
    ``mean_rank`` [models] and ``rank_share`` [models, models]: the share of replicates
    in which model m has rank r + 1.
    """
    n_models = len(points)
    replicates = np.asarray(replicates)
    replicates = replicates[np.isfinite(replicates).all(axis=1)]  # a replicate without any scored class: no rank
    rank = rankdata(-np.asarray(points), method="min").astype(int)
    ranks = rankdata(-replicates, method="min", axis=1).astype(int)  # [n, models]
    share = np.stack([(ranks == r + 1).mean(axis=0) for r in range(n_models)], axis=1)
    return {"rank": rank.tolist(), "mean_rank": ranks.mean(axis=0).tolist(), "rank_share": share.tolist(),
            "n_replicates": len(ranks)}


def adjust_p_values(p_values: list[float | None], method: str) -> list[float | None]:
    """Holm's step-down or Bonferroni's family-wise correction; ``None`` entries stay ``None`` and do not count."""
    index = [i for i, p in enumerate(p_values) if p is not None]
    count = len(index)
    adjusted: list[float | None] = [None] * len(p_values)
    if method == "bonferroni":
        for i in index:
            adjusted[i] = min(1.0, count * p_values[i])
        return adjusted
    if method != "holm":
        raise ValueError(f"unknown correction {method!r}")
    running = 0.0
    for step, i in enumerate(sorted(index, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (count - step) * p_values[i]))  # monotone: never below an earlier one
        adjusted[i] = running
    return adjusted
