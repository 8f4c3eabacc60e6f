"""Metrics of hard decisions (probability >= a threshold), as the CXR-LT 2024 report tabulates them.

A ranking metric (AP, AUROC) says how well a model orders images; a paper that
claims a model is usable also reports what happens once a threshold turns scores
into yes / no: how many findings it misses (false-negative rate), micro- and
macro-F1, precision, recall and the share of images whose every finding is right
(exact match). All of them come from scikit-learn on the [N, K] decision matrix.

Masked entries (label policy "ignore") enter as true negatives, label 0 and
decision 0, like F1 in :mod:`chexfusion.metrics`: a true negative changes none
of F1, precision, recall or FNR, and an image matches exactly when all its
*valid* entries are right.

Per class (over its valid entries): ``precision`` (0 when the class is never
predicted, scikit-learn's ``zero_division=0``), ``recall`` and ``FNR = 1 -
recall = FN / (FN + TP)``, all ``None`` for a class without a positive label,
like F1. Means (``macro_precision``, ``macro_recall``, ``mFNR``; ``mF1`` is the
macro-F1) are over the classes with a positive label. ``micro_F1`` pools the
decisions of every evaluated class (a false alarm on a class without positives
still counts) and ``exact_match`` is over every evaluated class too.

``thresholds`` is one probability for all classes or one per class: the second
is how per-class thresholds chosen on validation predictions
(:func:`choose_f1_thresholds`) are applied to test predictions.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_curve, precision_score, recall_score

DECISION_KEYS = ("micro_F1", "mF1", "macro_precision", "macro_recall", "mFNR", "exact_match")
PER_CLASS_KEYS = ("precision", "recall", "F1", "FNR")


def _per_column(score, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """One sklearn score per column (sklearn reads a single column as binary, hence the branch)."""
    if y_true.shape[1] == 1:
        return np.array([score(y_true[:, 0], y_pred[:, 0], zero_division=0.0)])
    return np.asarray(score(y_true, y_pred, average=None, zero_division=0.0), dtype=np.float64)


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def decision_metrics(y_true: np.ndarray, y_prob: np.ndarray, valid: np.ndarray, classes: list[str],
                     thresholds) -> dict:
    """The metrics of ``y_prob >= thresholds`` (a scalar or one threshold per class); see the module docstring.

    Returns the keys of :data:`DECISION_KEYS` and ``per_class`` ({class: {precision, recall, F1, FNR}}).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (y_true.shape[1],))
    truth = np.where(valid, y_true, 0.0).astype(int)
    decided = ((y_prob >= thresholds) & valid).astype(int)
    scored = (truth.sum(axis=0) > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on empty classes, which are excluded below
        precision = _per_column(precision_score, truth, decided)
        recall = _per_column(recall_score, truth, decided)
        f1 = _per_column(f1_score, truth, decided)
        micro = float(f1_score(truth.ravel(), decided.ravel(), zero_division=0.0))
    per_class = {}
    for k, name in enumerate(classes):
        values = (precision[k], recall[k], f1[k], 1.0 - recall[k]) if scored[k] else (None,) * 4
        per_class[name] = {key: None if v is None else float(v) for key, v in zip(PER_CLASS_KEYS, values)}
    return {
        "micro_F1": micro,
        "mF1": _mean_or_none(f1[scored]),
        "macro_precision": _mean_or_none(precision[scored]),
        "macro_recall": _mean_or_none(recall[scored]),
        "mFNR": _mean_or_none(1.0 - recall[scored]),
        "exact_match": float(accuracy_score(truth, decided)),
        "per_class": per_class,
    }


def best_f1_threshold(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """The probability whose ``>=`` decision maximises F1 on these labels; ``None`` without a positive.

    Candidates are the distinct scores (``sklearn.metrics.precision_recall_curve``); of
    tied maxima the lowest threshold wins, which misses fewer findings at equal F1.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    if y_true.sum() == 0:
        return None
    precision, recall, thresholds = precision_recall_curve(y_true, np.asarray(y_prob, dtype=np.float64))
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1))])


def choose_f1_thresholds(y_true: np.ndarray, y_prob: np.ndarray, valid: np.ndarray, classes: list[str],
                         fallback: float) -> tuple[np.ndarray, list[str]]:
    """Per-class F1-optimal thresholds from validation predictions.

    A class without a valid positive among the validation labels has no F1 to
    optimise: it keeps ``fallback`` and is named in the second return value, so
    the report can say which thresholds were not chosen on data.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    chosen = np.full(len(classes), float(fallback))
    fell_back = []
    for k, name in enumerate(classes):
        keep = valid[:, k]
        best = best_f1_threshold(y_true[keep, k], np.asarray(y_prob)[keep, k])
        if best is None:
            fell_back.append(name)
        else:
            chosen[k] = best
    return chosen, fell_back
