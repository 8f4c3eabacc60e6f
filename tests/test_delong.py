"""DeLong's paired AUROC test against the paper's formulas: a hand-computed case, a slow direct
implementation of DeLong et al. (1988) and of Obuchowski's (1997) clustered variance, and the mAUROC test."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from chexfusion.delong import auc_covariance, clustered_influences, delong_test, mean_auc_test


def _psi(x, y):
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _slow_delong(y, scores):
    """DeLong, DeLong & Clarke-Pearson (1988) as written: psi over all pairs, V10 / V01, S = S10/m + S01/n."""
    pos, neg = scores[y == 1], scores[y == 0]
    m, n, r = len(pos), len(neg), scores.shape[1]
    v10 = np.array([[np.mean([_psi(x[k], yy[k]) for yy in neg]) for k in range(r)] for x in pos])
    v01 = np.array([[np.mean([_psi(x[k], yy[k]) for x in pos]) for k in range(r)] for yy in neg])
    auc = v10.mean(axis=0)
    s10 = sum(np.outer(v - auc, v - auc) for v in v10) / (m - 1)
    s01 = sum(np.outer(v - auc, v - auc) for v in v01) / (n - 1)
    return auc, s10 / m + s01 / n


def _slow_obuchowski(y, scores, clusters):
    """Obuchowski (1997), cluster by cluster: V10 / V01 summed in a cluster, S10, S01, S11 and their cross terms."""
    pos, neg = scores[y == 1], scores[y == 0]
    big_m, big_n, r = len(pos), len(neg), scores.shape[1]
    auc = np.array([np.mean([_psi(x[k], yy[k]) for x in pos for yy in neg]) for k in range(r)])
    ids = list(dict.fromkeys(clusters))
    a = np.zeros((len(ids), r))
    b = np.zeros((len(ids), r))
    for s, cid in enumerate(ids):
        for i in np.flatnonzero(clusters == cid):
            for k in range(r):
                if y[i] == 1:
                    a[s, k] += np.mean([_psi(scores[i, k], yy[k]) for yy in neg]) - auc[k]
                else:
                    b[s, k] += np.mean([_psi(x[k], scores[i, k]) for x in pos]) - auc[k]
    n_all = len(ids)
    n_pos = len({c for c, t in zip(clusters, y) if t == 1})
    n_neg = len({c for c, t in zip(clusters, y) if t == 0})
    cov = np.zeros((r, r))
    for k in range(r):
        for q in range(r):
            s10 = n_pos / ((n_pos - 1) * big_m) * np.sum(a[:, k] * a[:, q])
            s01 = n_neg / ((n_neg - 1) * big_n) * np.sum(b[:, k] * b[:, q])
            s11_kq = n_all / (n_all - 1) * np.sum(a[:, k] * b[:, q])
            s11_qk = n_all / (n_all - 1) * np.sum(a[:, q] * b[:, k])
            cov[k, q] = s10 / big_m + s01 / big_n + (s11_kq + s11_qk) / (big_m * big_n)
    return auc, cov


def _data(n=60, seed=0, models=3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    y[:2] = [0, 1]
    base = y + rng.normal(0, 1.2, n)
    scores = np.column_stack([np.round(base + rng.normal(0, s, n), 1) for s in np.linspace(0.2, 1.5, models)])
    return y, scores  # rounded: many ties, which DeLong counts one half


def test_hand_computed_case():
    # positives 0.9, 0.6; negatives 0.7, 0.2, 0.1. AUC = (3 + 2) / 6.
    # V10 = [1, 2/3] (sample variance 1/18), V01 = [1/2, 1, 1] (sample variance 1/12)
    # Var = (1/18) / 2 + (1/12) / 3 = 1/18
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.7, 0.2, 0.1])
    parts = clustered_influences(y, s[:, None])
    assert parts["auc"][0] == pytest.approx(5 / 6, abs=1e-15)
    assert auc_covariance(parts)[0, 0] == pytest.approx(1 / 18, abs=1e-15)
    # against a constant score (AUC 1/2, no variance): z = (5/6 - 1/2) / sqrt(1/18)
    result = delong_test(y, s, np.full(5, 0.3))
    assert result["auc_b"] == 0.5 and result["diff"] == pytest.approx(1 / 3)
    assert result["z"] == pytest.approx((1 / 3) / np.sqrt(1 / 18), abs=1e-12)
    assert result["p"] == pytest.approx(2 * norm.sf((1 / 3) / np.sqrt(1 / 18)), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_equals_the_direct_formula_and_sklearn(seed):
    y, scores = _data(seed=seed)
    auc, cov = _slow_delong(y, scores)
    parts = clustered_influences(y, scores)
    np.testing.assert_allclose(parts["auc"], auc, atol=1e-12)
    np.testing.assert_allclose(auc_covariance(parts), cov, atol=1e-12)
    for k in range(scores.shape[1]):
        assert parts["auc"][k] == pytest.approx(roc_auc_score(y, scores[:, k]), abs=1e-9)
    result = delong_test(y, scores[:, 0], scores[:, 2])
    variance = cov[0, 0] + cov[2, 2] - 2 * cov[0, 2]
    assert result["se"] == pytest.approx(np.sqrt(variance), abs=1e-12)
    assert result["p"] == pytest.approx(2 * norm.sf(abs(auc[0] - auc[2]) / np.sqrt(variance)), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_clustered_variance_equals_obuchowski_written_out(seed):
    y, scores = _data(n=50, seed=seed, models=2)
    clusters = np.array([f"s{i // 3 if i < 30 else i}" for i in range(50)])  # studies of 3, then single images
    auc, cov = _slow_obuchowski(y, scores, clusters)
    parts = clustered_influences(y, scores, clusters)
    np.testing.assert_allclose(parts["auc"], auc, atol=1e-12)
    np.testing.assert_allclose(auc_covariance(parts), cov, atol=1e-12)


def test_one_image_per_study_is_plain_delong_and_copied_images_add_no_evidence():
    y, scores = _data(n=40, seed=4, models=2)
    plain = delong_test(y, scores[:, 0], scores[:, 1])
    singles = delong_test(y, scores[:, 0], scores[:, 1], clusters=np.arange(40))
    for key in ("auc_a", "auc_b", "diff", "se", "z", "p"):
        assert singles[key] == pytest.approx(plain[key], rel=1e-12)
    # every image three times in its study: the same test as one image per study ...
    copies = delong_test(np.repeat(y, 3), np.repeat(scores[:, 0], 3), np.repeat(scores[:, 1], 3),
                         clusters=np.repeat(np.arange(40), 3))
    assert copies["se"] == pytest.approx(plain["se"], rel=1e-9) and copies["p"] == pytest.approx(plain["p"], rel=1e-9)
    # ... while treating the copies as independent images claims a sqrt(3) smaller standard error
    naive = delong_test(np.repeat(y, 3), np.repeat(scores[:, 0], 3), np.repeat(scores[:, 1], 3))
    assert naive["se"] < plain["se"] / 1.6


def test_mean_auc_test_with_one_class_is_that_class_test():
    y, scores = _data(n=50, seed=5, models=2)
    one = mean_auc_test(y[:, None], scores[:, :1], scores[:, 1:], np.ones((50, 1), dtype=bool))
    plain = delong_test(y, scores[:, 0], scores[:, 1])
    assert one["diff"] == pytest.approx(plain["diff"]) and one["se"] == pytest.approx(plain["se"], rel=1e-12)
    assert one["n_classes"] == 1


def test_mean_auc_standard_error_matches_the_bootstrap_of_correlated_classes():
    """Classes whose labels overlap have correlated AUROCs; the mAUROC variance must include that covariance
    (the bootstrap of the mean difference measures it directly)."""
    rng = np.random.default_rng(6)
    n = 400
    first = (rng.random(n) < 0.3).astype(int)
    second = np.where(rng.random(n) < 0.9, first, 1 - first)  # mostly the same findings
    third = (rng.random(n) < 0.2).astype(int)
    y = np.column_stack([first, second, third])
    a = y + rng.normal(0, 1.0, y.shape)
    b = y + rng.normal(0, 1.0, y.shape)
    a[:, 1] = a[:, 0] + rng.normal(0, 0.2, n)  # each model scores the second class like the first
    b[:, 1] = b[:, 0] + rng.normal(0, 0.2, n)
    valid = np.ones_like(y, dtype=bool)
    result = mean_auc_test(y, a, b, valid)
    assert result["mauc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-9)
    diffs = []
    for _ in range(400):
        pick = rng.integers(0, n, n)
        diffs.append(roc_auc_score(y[pick], a[pick]) - roc_auc_score(y[pick], b[pick]))
    assert result["se"] == pytest.approx(np.std(diffs, ddof=1), rel=0.15)
    independent = np.sqrt(sum(delong_test(y[:, k], a[:, k], b[:, k])["se"] ** 2 for k in range(3))) / 3
    assert result["se"] > 1.1 * independent  # the covariance between classes matters here


def test_identical_models_have_no_test_and_undefined_classes_are_skipped():
    y, scores = _data(n=30, seed=7, models=1)
    same = delong_test(y, scores[:, 0], scores[:, 0])
    assert same["diff"] == 0.0 and same["p"] is None
    labels = np.column_stack([y, np.zeros(30, dtype=int)])  # second class: no positive
    probs = np.column_stack([scores[:, 0], scores[:, 0]])
    other = np.column_stack([np.linspace(0, 1, 30)] * 2)
    result = mean_auc_test(labels, probs, other, np.ones_like(labels, dtype=bool))
    assert result["n_classes"] == 1
    assert result["diff"] == pytest.approx(delong_test(y, scores[:, 0], other[:, 0])["diff"])
