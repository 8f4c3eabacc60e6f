"""DeLong's test for paired AUROCs, with images clustered in studies (Obuchowski's extension).

Two models scored on the same images give correlated AUROCs; DeLong, DeLong and
Clarke-Pearson (Biometrics 1988) estimate their covariance from the
*structural components*: for a positive image i, ``V10(i)`` is the share of
negatives it outscores (ties count one half); for a negative j, ``V01(j)`` the
share of positives that outscore it. Their means are the AUROC. The fast
computation by midranks is Sun & Xu (IEEE Signal Processing Letters, 2014).

Images of a study are not independent (one report labels them, a study-level
model gives them one score), so the components are summed per study and the
variance is Obuchowski's (Biometrics 1997) for clustered data::

    a_s = sum over positives i of study s of (V10(i) - AUC),   b_s likewise with V01
    S10 = I10 / ((I10 - 1) M) * sum_s a_s a_s'    (I10: studies with a positive, M positives)
    S01 = I01 / ((I01 - 1) N) * sum_s b_s b_s'    (I01: studies with a negative, N negatives)
    S11 = I / (I - 1) * sum_s a_s b_s'            (I: studies)
    Cov = S10 / M + S01 / N + (S11 + S11^T) / (M N)

With one image per study ``S11`` vanishes and this *is* DeLong's covariance
(``S10``, ``S01`` become the sample covariances of V10 and V01).

For the mean AUROC over classes, the classes' AUROCs are correlated too (the same
images). The covariance of two classes is estimated from the same per-study
influences ``phi_s = a_s / M + b_s / N`` (``I / (I - 1) * sum_s phi_s phi_s'``),
while each class keeps its own block above, so one class alone gives exactly
its own test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata


def structural_components(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC of each score column and the structural components, by midranks.

    ``y_true`` [N] in {0, 1} with at least one of each; ``scores`` [N, R] (R models).
    Returns ``(auc [R], v10 [M, R] over the positives, v01 [N, R] over the negatives)``,
    positives and negatives in row order.
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(len(y_true), -1)
    positives, negatives = scores[y_true], scores[~y_true]
    m, n = len(positives), len(negatives)
    rank_all = rankdata(np.vstack([positives, negatives]), axis=0)  # midranks: ties count one half
    rank_pos = rankdata(positives, axis=0)
    rank_neg = rankdata(negatives, axis=0)
    v10 = (rank_all[:m] - rank_pos) / n  # negatives below each positive
    v01 = 1.0 - (rank_all[m:] - rank_neg) / m  # positives above each negative
    return v10.mean(axis=0), v10, v01


def _cluster_sums(values: np.ndarray, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    out = np.zeros((n_clusters, values.shape[1]))
    np.add.at(out, codes, values)
    return out


def _correction(count: int) -> float:
    """``I / (I - 1)``; 0 for a single cluster, whose centred sum is 0 anyway (components sum to the AUC)."""
    return count / (count - 1) if count > 1 else 0.0


def clustered_influences(y_true, scores, clusters=None) -> dict:
    """Per-cluster centred component sums of one class: what every covariance here is built from.

    Returns ``auc`` [R], ``a`` and ``b`` [I, R] (positive / negative sums), the
    counts ``M``, ``N``, ``I``, ``I10``, ``I01`` and ``codes`` [I] (the cluster ids).
    ``clusters`` None makes every image its own cluster (plain DeLong).
    """
    y_true = np.asarray(y_true).astype(bool)
    ids = np.arange(len(y_true)).astype(str) if clusters is None else np.asarray(clusters).astype(str)
    codes, uniques = pd.factorize(pd.Series(ids), sort=False)
    auc, v10, v01 = structural_components(y_true, scores)
    a = _cluster_sums(v10 - auc, codes[y_true], len(uniques))
    b = _cluster_sums(v01 - auc, codes[~y_true], len(uniques))
    return {"auc": auc, "a": a, "b": b, "M": int(y_true.sum()), "N": int((~y_true).sum()), "I": len(uniques),
            "I10": len(np.unique(codes[y_true])), "I01": len(np.unique(codes[~y_true])), "codes": uniques}


def auc_covariance(parts: dict) -> np.ndarray:
    """Obuchowski's (DeLong's, for one image per cluster) covariance [R, R] of one class's AUROCs."""
    a, b, big_m, big_n = parts["a"], parts["b"], parts["M"], parts["N"]
    s10 = _correction(parts["I10"]) / big_m * (a.T @ a)
    s01 = _correction(parts["I01"]) / big_n * (b.T @ b)
    s11 = _correction(parts["I"]) * (a.T @ b)
    return s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)


def z_test(difference: float, variance: float, level: float = 0.95) -> dict:
    """Two-sided normal test and interval of a difference; ``None`` fields when the variance is not positive."""
    if not variance > 0.0:
        return {"se": None, "z": None, "p": None, "ci": None}
    se = math.sqrt(variance)
    half = float(norm.ppf(0.5 + level / 2.0)) * se
    z = difference / se
    return {"se": se, "z": z, "p": float(2.0 * norm.sf(abs(z))), "ci": [difference - half, difference + half]}


def delong_test(y_true, score_a, score_b, clusters=None, level: float = 0.95) -> dict:
    """DeLong's paired test of AUROC(a) - AUROC(b) on one class (clustered when ``clusters`` is given)."""
    parts = clustered_influences(y_true, np.column_stack([score_a, score_b]), clusters)
    cov = auc_covariance(parts)
    difference = float(parts["auc"][0] - parts["auc"][1])
    return {"auc_a": float(parts["auc"][0]), "auc_b": float(parts["auc"][1]), "diff": difference,
            **z_test(difference, float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), level)}


def mean_auc_test(y_true, prob_a, prob_b, valid, clusters=None, level: float = 0.95) -> dict:
    """Paired test of mAUROC(a) - mAUROC(b) over the classes with a positive and a negative.

    ``y_true``, ``prob_a``, ``prob_b``, ``valid`` are [N, K]. Each class is scored over its
    valid rows; see the module docstring for the covariance between classes.
    """
    y_true, valid = np.asarray(y_true), np.asarray(valid, dtype=bool)
    ids = np.arange(len(y_true)).astype(str) if clusters is None else np.asarray(clusters).astype(str)
    _, uniques = pd.factorize(pd.Series(ids), sort=False)
    influences, blocks, aucs = [], [], []
    for k in range(y_true.shape[1]):
        keep = valid[:, k]
        labels = y_true[keep, k]
        if labels.sum() == 0 or labels.sum() == labels.size:
            continue
        parts = clustered_influences(labels, np.column_stack([prob_a[keep, k], prob_b[keep, k]]), ids[keep])
        cov = auc_covariance(parts)
        blocks.append(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
        aucs.append(parts["auc"])
        phi = parts["a"] / parts["M"] + parts["b"] / parts["N"]  # [clusters of this class, 2]
        phi_all = np.zeros(len(uniques))
        phi_all[pd.Index(uniques).get_indexer(parts["codes"])] = phi[:, 0] - phi[:, 1]
        influences.append(phi_all)
    if not aucs:
        return {"mauc_a": None, "mauc_b": None, "diff": None, "n_classes": 0, "se": None, "z": None, "p": None,
                "ci": None}
    phi = np.column_stack(influences)  # [all clusters, classes]: influence of each study on each class's difference
    cross = _correction(len(uniques)) * (phi.T @ phi)
    np.fill_diagonal(cross, blocks)  # each class keeps its own (Obuchowski / DeLong) variance
    mauc_a, mauc_b = np.mean(aucs, axis=0)
    difference = float(mauc_a - mauc_b)
    variance = float(cross.sum()) / len(aucs) ** 2
    return {"mauc_a": float(mauc_a), "mauc_b": float(mauc_b), "diff": difference, "n_classes": len(aucs),
            **z_test(difference, variance, level)}

