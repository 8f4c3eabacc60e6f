"""CXR-LT metrics: macro mAP (the challenge's primary metric), mAUROC, mF1, mECE and head/medium/tail mAP.

Used by ``chexfusion evaluate`` and by the training loops for validation, so it is
quick for ~1,000 images x 40 classes and never crashes on a degenerate class.
scikit-learn computes AP, AUROC and F1; only the calibration error is written here
because scikit-learn has no per-class ECE.

Definitions (per class, over the *valid* entries of that class: ``mask != 0``):

- ``AP``: ``sklearn.metrics.average_precision_score`` (step-wise, no interpolation),
  the CXR-LT primary metric. Undefined (``None``) when the class has no positive.
- ``AUROC``: ``sklearn.metrics.roc_auc_score``. Undefined when the class has no
  positive or no negative.
- ``F1``: at ``y_prob >= threshold`` (0.5 in CXR-LT), ``sklearn.metrics.f1_score``.
  Undefined when the class has no positive (then F1 would only reward predicting
  nothing). Masked entries are passed as true negative (label 0, prediction 0),
  which leaves F1 = 2TP / (2TP + FP + FN) unchanged and lets one sklearn call
  score all classes.
- ``ECE``: the predicted probabilities are cut into ``ece_bins`` (15) equal-width
  bins over [0, 1]: bin b holds ``b/B <= p < (b+1)/B`` and the last bin includes
  p = 1. For each non-empty bin, ``|fraction of positives - mean probability|`` is
  weighted by the share of the class's valid entries that fall in the bin; ECE is
  the sum. Defined whenever the class has a valid entry (a class without positives
  still has a calibration error).

Means (``mAP``, ``mAUROC``, ``mF1``, ``mECE``) are unweighted over the classes whose
value is defined; undefined classes are listed in ``undefined_classes`` and are
never scored 0. ``head_mAP`` / ``medium_mAP`` / ``tail_mAP`` average AP within the
prevalence group of :func:`chexfusion.data.classes.prevalence_group` (head > 10%,
medium 1-10%, tail < 1%), taken from the training prevalence when given, else
from the prevalence among the evaluated labels; a group without a scorable class
has ``None``. ``group_avg_mAP`` is the mean of the three group mAPs, the "Avg"
column of the CXR-LT papers (``None`` unless all three are defined: a mean of
two groups would not be the papers' figure).

The decisions at ``threshold`` also give ``micro_F1``, ``macro_precision``,
``macro_recall``, ``mFNR`` (false-negative rate), ``exact_match`` and per class
``precision``, ``recall``, ``FNR``: :mod:`chexfusion.decision_metrics`
defines them (``mF1`` is the macro-F1).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from .data.classes import prevalence_group
from .decision_metrics import DECISION_KEYS, decision_metrics
from .progress import tqdm
from .resampling import StudyResampler

GROUPS = ("head", "medium", "tail")
HEADLINE_KEYS = ("mAP", "mAUROC", "mF1", "mECE", "head_mAP", "medium_mAP", "tail_mAP", "group_avg_mAP")
ECE_BINNING = "equal-width"  # the only binning written: bins of width 1/ece_bins over [0, 1]


def _as_inputs(y_true, y_prob, classes, mask):
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_prob.shape:
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} must both be [N, K]")
    if y_true.shape[1] != len(classes):
        raise ValueError(f"{len(classes)} class names for {y_true.shape[1]} columns")
    valid = np.ones(y_true.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    if valid.shape != y_true.shape:
        raise ValueError(f"mask {valid.shape} must match y_true {y_true.shape}")
    if not np.isin(y_true[valid], (0.0, 1.0)).all():
        raise ValueError("y_true must be 0 or 1 wherever the mask is set")
    if not np.isfinite(y_prob[valid]).all():
        raise ValueError("y_prob must be finite wherever the mask is set")
    return y_true, y_prob, valid


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 15) -> float | None:
    """Binary ECE of one class with equal-width bins over [0, 1] (see the module docstring)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.size == 0:
        return None
    stats = calibration_bins(y_true, y_prob, bins)
    weights = stats["count"] / y_true.size
    filled = stats["count"] > 0
    return float(np.sum(weights[filled] * np.abs(stats["positive_rate"][filled] - stats["mean_prob"][filled])))


def calibration_bins(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin: ``count``, ``mean_prob`` and ``positive_rate`` (NaN for empty bins).

    Shared by the ECE and the reliability diagram so both use exactly the same bins.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges[1:-1], y_prob, side="right")  # p on an inner edge goes to the upper bin
    count = np.bincount(index, minlength=bins).astype(np.float64)
    prob_sum = np.bincount(index, weights=y_prob, minlength=bins)
    pos_sum = np.bincount(index, weights=y_true, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": edges,
            "count": count,
            "mean_prob": prob_sum / count,
            "positive_rate": pos_sum / count,
        }


def _mean(values) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def class_prevalence(y_true: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Fraction of positive valid entries per class (NaN for a class without valid entries)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    valid = np.ones(y_true.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    n_valid = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, y_true, 0.0).sum(axis=0) / n_valid


def compute_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    classes: list[str],
    train_prevalence: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threshold: float = 0.5,
    ece_bins: int = 15,
) -> dict:
    """All CXR-LT metrics of ``y_prob`` [N, K] against ``y_true`` [N, K] in {0, 1}.

    ``mask`` [N, K] marks entries to ignore with 0 (label policy "ignore").
    ``per_class[c]["prevalence"]`` is the prevalence the group was taken from
    (``prevalence_source`` says whether that was training or evaluation);
    ``per_class[c]["chance_AP"]`` is always the evaluation-set prevalence.
    """
    classes = list(classes)
    y_true, y_prob, valid = _as_inputs(y_true, y_prob, classes, mask)
    eval_prevalence = class_prevalence(y_true, valid)
    if train_prevalence is None:
        grouping, source = eval_prevalence, "eval"
    else:
        grouping, source = np.asarray(train_prevalence, dtype=np.float64), "train"
        if grouping.shape != (len(classes),):
            raise ValueError(f"train_prevalence has shape {grouping.shape}, expected ({len(classes)},)")

    decisions = decision_metrics(y_true, y_prob, valid, classes, threshold)
    per_class = {name: _class_entry(y_true[valid[:, k], k], y_prob[valid[:, k], k], decisions["per_class"][name],
                                    float(grouping[k]), ece_bins)
                 for k, name in enumerate(classes)}
    result = {**_headline_means(per_class, decisions["mF1"]),
              **{key: decisions[key] for key in DECISION_KEYS if key != "mF1"}}
    result.update({
        "n_images": int(y_true.shape[0]),
        "n_classes": len(classes),
        "n_classes_scored": sum(c["AP"] is not None for c in per_class.values()),
        "undefined_classes": [name for name, c in per_class.items() if c["AP"] is None or c["AUROC"] is None],
        "threshold": float(threshold),
        "ece_bins": int(ece_bins),
        "ece_binning": ECE_BINNING,
        "prevalence_source": source,
        "per_class": per_class,
    })
    return result


def _class_entry(yk: np.ndarray, pk: np.ndarray, decided: dict, prevalence: float, ece_bins: int) -> dict:
    """One class's entry of ``per_class`` from its valid entries: AP needs a positive, AUROC also a negative;
    ``decided`` holds its precision, recall, F1 and FNR at the threshold; ``prevalence`` (NaN for a class
    without valid entries) picks its head / medium / tail group."""
    n_pos = int(yk.sum())
    ap = auroc = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on the degenerate cases excluded here
        if n_pos > 0:
            ap = float(average_precision_score(yk, pk))
            if n_pos < yk.size:
                auroc = float(roc_auc_score(yk, pk))
    known = not math.isnan(prevalence)
    return {
        "AP": ap,
        # the AP of a random ranking (the evaluation-set prevalence): what AP is read against, e.g. for a class
        # scored zero-shot
        "chance_AP": n_pos / yk.size if ap is not None else None,
        "AUROC": auroc,
        **decided,
        "ECE": expected_calibration_error(yk, pk, ece_bins),
        "n_pos": n_pos,
        "n_valid": int(yk.size),
        "prevalence": prevalence if known else None,
        "group": prevalence_group(prevalence) if known else None,
    }

def _headline_means(per_class: dict[str, dict], mean_f1: float | None) -> dict:
    """The means over scored classes, overall and per prevalence group, in metrics.json's key order."""
    result = {
        "mAP": _mean(c["AP"] for c in per_class.values()),
        # what a random ranking scores on average: each scored class's AP is then its evaluation-set prevalence
        "chance_mAP": _mean(c["chance_AP"] for c in per_class.values()),
        "mAUROC": _mean(c["AUROC"] for c in per_class.values()),
        "mF1": mean_f1,
        "mECE": _mean(c["ECE"] for c in per_class.values()),
    }
    for group in GROUPS:
        result[f"{group}_mAP"] = _mean(c["AP"] for c in per_class.values() if c["group"] == group)
    group_maps = [result[f"{group}_mAP"] for group in GROUPS]
    result["group_avg_mAP"] = None if None in group_maps else float(np.mean(group_maps))
    return result


def bootstrap_intervals(y_true, y_prob, classes, n: int, seed: int = 0, level: float = 0.95, study_ids=None,
                        **kw) -> dict:
    """Percentile bootstrap intervals of the headline means, resampling studies with replacement.

    ``study_ids`` (one per row) makes a replicate draw whole studies
    (:class:`chexfusion.resampling.StudyResampler`: the images of a study are not
    independent); without it every row is its own unit. Groups are fixed once
    from the full data so that a replicate cannot move a class between
    head/medium/tail. In a replicate, a class that lost all its positives is left
    out of the means, exactly as in :func:`compute_metrics`. Returns ``{"n",
    "seed", "level", "unit", "n_units", "n_images", "intervals": {metric: [low,
    high] or None}}``; the same seed gives the same intervals. ``kw`` are
    :func:`compute_metrics`'s options. Shows progress: a thousand replicates take a while.
    """
    if n < 1:
        raise ValueError("bootstrap needs n >= 1")
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    mask = kw.pop("mask", None)
    if kw.get("train_prevalence") is None:
        kw["train_prevalence"] = class_prevalence(y_true, mask)
    rng = np.random.default_rng(seed)
    resampler = StudyResampler(study_ids, n_rows=y_true.shape[0])
    samples: dict[str, list[float]] = {key: [] for key in HEADLINE_KEYS}
    for _ in tqdm(range(n), desc="bootstrap", unit="replicate"):
        pick = resampler.draw(rng)
        result = compute_metrics(y_true[pick], y_prob[pick], classes,
                                 mask=None if mask is None else np.asarray(mask)[pick], **kw)
        for key in HEADLINE_KEYS:
            if result[key] is not None:
                samples[key].append(result[key])
    intervals = {key: percentile_interval(values, level) for key, values in samples.items()}
    return {"n": int(n), "seed": int(seed), "level": float(level), **resampler.describe(), "intervals": intervals}


def percentile_interval(values, level: float = 0.95) -> list[float] | None:
    """The central ``level`` percentile interval of bootstrap replicates; ``None`` without replicates."""
    if len(values) == 0:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    return [float(v) for v in np.percentile(values, [tail, 100.0 - tail])]


def json_safe(obj):
    """``obj`` with NaN/inf replaced by None and numpy types by Python ones, recursively (for strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
