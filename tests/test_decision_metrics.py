"""Thresholded metrics (micro/macro F1, precision, recall, FNR, exact match), validation-chosen thresholds,
the papers' head/medium/tail "Avg", and bootstrap resampling by study."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from chexfusion.decision_metrics import best_f1_threshold, choose_f1_thresholds, decision_metrics
from chexfusion.metrics import bootstrap_intervals, compute_metrics
from chexfusion.resampling import StudyResampler


def _random(n=300, k=6, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.03, 0.4, k)
    y = (rng.random((n, k)) < rates).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random((n, k)), 0.0, 1.0)
    return y, p, [f"class {i}" for i in range(k)]


def test_decision_metrics_equal_sklearn():
    y, p, classes = _random()
    y[:, 5] = 0  # no positive: out of the macro means, its false alarms still in micro-F1 and exact match
    result = compute_metrics(y, p, classes)
    decided = (p >= 0.5).astype(int)
    scored = list(range(5))
    assert result["micro_F1"] == pytest.approx(f1_score(y, decided, average="micro"), abs=1e-9)
    assert result["mF1"] == pytest.approx(f1_score(y[:, scored], decided[:, scored], average="macro"), abs=1e-9)
    assert result["macro_precision"] == pytest.approx(
        precision_score(y[:, scored], decided[:, scored], average="macro", zero_division=0), abs=1e-9)
    assert result["macro_recall"] == pytest.approx(recall_score(y[:, scored], decided[:, scored], average="macro"),
                                                   abs=1e-9)
    assert result["mFNR"] == pytest.approx(1.0 - result["macro_recall"], abs=1e-12)
    assert result["exact_match"] == pytest.approx(accuracy_score(y, decided), abs=1e-9)
    for k in scored:
        entry = result["per_class"][classes[k]]
        assert entry["FNR"] == pytest.approx(1.0 - recall_score(y[:, k], decided[:, k]), abs=1e-9)
        assert entry["precision"] == pytest.approx(precision_score(y[:, k], decided[:, k], zero_division=0), abs=1e-9)
    assert result["per_class"]["class 5"]["FNR"] is None and result["per_class"]["class 5"]["precision"] is None
    assert result["ece_binning"] == "equal-width" and result["ece_bins"] == 15


def test_fnr_and_exact_match_on_a_hand_built_example_with_a_mask():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3], [0.7, 0.2]])
    mask = np.array([[1, 1], [1, 1], [1, 1], [0, 1]])  # the false alarm of row 3 is on an ignored label
    result = compute_metrics(y, p, ["a", "b"], mask=mask)
    # a: positives rows 0, 1; row 1 missed -> FNR 1/2. b: positives rows 1, 2; row 2 missed -> FNR 1/2.
    assert result["per_class"]["a"]["FNR"] == 0.5 and result["per_class"]["b"]["FNR"] == 0.5
    assert result["mFNR"] == 0.5
    # rows right on every valid label: 0 and 3 (whose wrong decision is masked)
    assert result["exact_match"] == 0.5
    assert result["per_class"]["a"]["precision"] == 1.0  # the masked false alarm does not count
    # the same at another threshold: 0.15 catches row 1 for a and row 2 for b
    at_low = decision_metrics(y, p, mask != 0, ["a", "b"], 0.15)
    assert at_low["mFNR"] == 0.0 and at_low["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    # one threshold per class
    per_class = decision_metrics(y, p, mask != 0, ["a", "b"], np.array([0.15, 0.5]))
    assert per_class["per_class"]["a"]["FNR"] == 0.0 and per_class["per_class"]["b"]["FNR"] == 0.5


def test_group_average_is_the_mean_of_the_three_groups_and_needs_all_three():
    y, p, classes = _random(k=6)
    train = np.array([0.005, 0.008, 0.05, 0.06, 0.3, 0.5])  # two tail, two medium, two head
    result = compute_metrics(y, p, classes, train_prevalence=train)
    groups = [result["head_mAP"], result["medium_mAP"], result["tail_mAP"]]
    assert None not in groups
    assert result["group_avg_mAP"] == pytest.approx(np.mean(groups), abs=1e-12)
    no_tail = compute_metrics(y, p, classes, train_prevalence=np.full(6, 0.5))
    assert no_tail["tail_mAP"] is None and no_tail["group_avg_mAP"] is None


def test_best_f1_threshold_is_the_brute_force_maximum_and_lowest_of_ties():
    y, p, _ = _random(n=200, k=3, seed=5)
    for k in range(3):
        best = best_f1_threshold(y[:, k], p[:, k])
        scores = {t: f1_score(y[:, k], p[:, k] >= t) for t in np.unique(p[:, k])}
        top = max(scores.values())
        assert f1_score(y[:, k], p[:, k] >= best) == pytest.approx(top, abs=1e-12)
        assert best == min(t for t, s in scores.items() if s == pytest.approx(top, abs=1e-12))
    # a tie: >= 0.6 (TP 1, FN 1) and >= 0.3 (TP 2, FP 2) both give F1 2/3; the lower one misses less
    assert best_f1_threshold(np.array([1, 0, 1, 0]), np.array([0.6, 0.5, 0.3, 0.4])) == 0.3
    assert best_f1_threshold(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4])) is None


def test_validation_thresholds_fall_back_where_validation_has_no_positive():
    y, p, classes = _random(n=150, k=3, seed=6)
    y[:, 1] = 0
    thresholds, fell_back = choose_f1_thresholds(y, p, np.ones_like(y, dtype=bool), classes, fallback=0.5)
    assert fell_back == ["class 1"] and thresholds[1] == 0.5
    assert thresholds[0] == best_f1_threshold(y[:, 0], p[:, 0])


def test_study_resampler_draws_whole_studies_reproducibly():
    studies = np.array(["s1", "s2", "s2", "s3", "s3", "s3", "s4"])
    resampler = StudyResampler(studies)
    assert resampler.n_studies == 4 and resampler.describe()["unit"] == "study"
    first = resampler.draw(np.random.default_rng(3))
    assert np.array_equal(first, resampler.draw(np.random.default_rng(3)))
    for seed in range(20):
        rows = resampler.draw(np.random.default_rng(seed))
        drawn = studies[rows]
        for study, size in (("s1", 1), ("s2", 2), ("s3", 3), ("s4", 1)):
            count = int((drawn == study).sum())
            assert count % size == 0  # a study comes with all its images or not at all
            # each copy of a drawn study carries every one of its rows
            assert sorted(set(rows[drawn == study])) == sorted(np.flatnonzero(studies == study)) or count == 0
        assert sum((drawn == s).sum() // z for s, z in (("s1", 1), ("s2", 2), ("s3", 3), ("s4", 1))) == 4


def test_bootstrap_by_study_of_copied_images_equals_bootstrap_of_the_originals():
    """Three identical images per study carry one study's evidence: resampling studies gives exactly the
    intervals of the one-image data, while resampling images would claim three times the evidence."""
    y, p, classes = _random(n=120, k=4, seed=7)
    copies_y, copies_p = np.repeat(y, 3, axis=0), np.repeat(p, 3, axis=0)
    studies = np.repeat(np.arange(120), 3).astype(str)
    original = bootstrap_intervals(y, p, classes, n=30, seed=2)
    by_study = bootstrap_intervals(copies_y, copies_p, classes, n=30, seed=2, study_ids=studies)
    assert by_study["unit"] == "study" and by_study["n_units"] == 120 and by_study["n_images"] == 360
    for key, interval in original["intervals"].items():
        assert by_study["intervals"][key] == pytest.approx(interval, abs=1e-12)
    by_image = bootstrap_intervals(copies_y, copies_p, classes, n=30, seed=2)
    def width(r):
        return r["intervals"]["mAP"][1] - r["intervals"]["mAP"][0]

    assert width(by_image) < width(by_study)
