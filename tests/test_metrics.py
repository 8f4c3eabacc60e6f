"""CXR-LT metrics: agreement with scikit-learn, degenerate classes, ECE, masks, groups, bootstrap, JSON."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from chexfusion.metrics import bootstrap_intervals, compute_metrics, expected_calibration_error, json_safe


def _random(n=300, k=7, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.03, 0.4, k)
    y = (rng.random((n, k)) < rates).astype(int)
    p = np.clip(0.5 * y + 0.6 * rng.random((n, k)), 0.0, 1.0)
    return y, p, [f"class {i}" for i in range(k)]


def test_means_equal_sklearn_macro_averages():
    y, p, classes = _random()
    result = compute_metrics(y, p, classes)
    # Independent: sklearn's own macro averages over the multilabel matrix.
    assert result["mAP"] == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-9)
    assert result["mAUROC"] == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-9)
    assert result["mF1"] == pytest.approx(f1_score(y, p >= 0.5, average="macro"), abs=1e-9)
    for k, name in enumerate(classes):
        assert result["per_class"][name]["AP"] == pytest.approx(average_precision_score(y[:, k], p[:, k]), abs=1e-9)
        assert result["per_class"][name]["n_pos"] == int(y[:, k].sum())
    assert result["n_images"] == 300 and result["n_classes_scored"] == 7 and result["undefined_classes"] == []


def test_class_without_positives_is_null_and_left_out_of_means():
    y, p, classes = _random()
    y[:, 2] = 0
    result = compute_metrics(y, p, classes)
    scored = [k for k in range(len(classes)) if k != 2]
    assert result["per_class"]["class 2"]["AP"] is None
    assert result["per_class"]["class 2"]["AUROC"] is None
    assert result["per_class"]["class 2"]["F1"] is None
    assert result["per_class"]["class 2"]["ECE"] is not None  # calibration is still defined
    assert result["undefined_classes"] == ["class 2"]
    assert result["n_classes_scored"] == len(classes) - 1
    assert result["mAP"] == pytest.approx(average_precision_score(y[:, scored], p[:, scored]), abs=1e-9)
    assert result["mAUROC"] == pytest.approx(roc_auc_score(y[:, scored], p[:, scored]), abs=1e-9)


def test_class_without_negatives_has_ap_but_no_auroc():
    y, p, classes = _random()
    y[:, 0] = 1
    result = compute_metrics(y, p, classes)
    assert result["per_class"]["class 0"]["AP"] == pytest.approx(1.0)
    assert result["per_class"]["class 0"]["AUROC"] is None
    assert "class 0" in result["undefined_classes"]
    rest = list(range(1, len(classes)))
    assert result["mAUROC"] == pytest.approx(roc_auc_score(y[:, rest], p[:, rest]), abs=1e-9)


def test_all_classes_undefined_gives_null_means_not_a_crash():
    y = np.zeros((5, 2), dtype=int)
    result = compute_metrics(y, np.full((5, 2), 0.2), ["a", "b"])
    assert result["mAP"] is None and result["mAUROC"] is None and result["mF1"] is None
    assert result["mECE"] == pytest.approx(0.2)
    json.dumps(json_safe(result), allow_nan=False)


def test_ece_on_hand_built_example():
    # Bins of width 1/15. Probabilities 0.1 and 0.12 share bin 1 (1/15 <= p < 2/15);
    # 0.9 and 1.0 fall in bin 13 and bin 14 (the last bin includes 1).
    y = np.array([1, 0, 1, 0])
    p = np.array([0.1, 0.12, 0.9, 1.0])
    expected = (2 / 4) * abs(0.5 - 0.11) + (1 / 4) * abs(1 - 0.9) + (1 / 4) * abs(0 - 1.0)
    assert expected_calibration_error(y, p, bins=15) == pytest.approx(expected, abs=1e-12)
    # A probability exactly on an inner edge belongs to the upper bin: 1/3 with 3 bins is in [1/3, 2/3).
    assert expected_calibration_error(np.array([1, 0]), np.array([1 / 3, 0.5]), bins=3) == pytest.approx(
        abs(0.5 - (1 / 3 + 0.5) / 2))
    result = compute_metrics(y[:, None], p[:, None], ["only"])
    assert result["per_class"]["only"]["ECE"] == pytest.approx(expected, abs=1e-12)
    assert result["mECE"] == pytest.approx(expected, abs=1e-12)


def test_mask_excludes_entries():
    y, p, classes = _random(seed=1)
    rng = np.random.default_rng(5)
    mask = (rng.random(y.shape) > 0.3).astype(int)
    y_with_garbage = np.where(mask == 1, y, -1)  # ignored entries may hold any value (e.g. uncertain -1)
    result = compute_metrics(y_with_garbage, p, classes, mask=mask)
    for k, name in enumerate(classes):
        keep = mask[:, k] == 1
        c = result["per_class"][name]
        assert c["AP"] == pytest.approx(average_precision_score(y[keep, k], p[keep, k]), abs=1e-9)
        assert c["AUROC"] == pytest.approx(roc_auc_score(y[keep, k], p[keep, k]), abs=1e-9)
        assert c["F1"] == pytest.approx(f1_score(y[keep, k], p[keep, k] >= 0.5), abs=1e-9)
        assert c["ECE"] == pytest.approx(expected_calibration_error(y[keep, k], p[keep, k]), abs=1e-12)
        assert c["n_pos"] == int(y[keep, k].sum()) and c["n_valid"] == int(keep.sum())


def test_groups_follow_training_prevalence_when_given():
    y, p, classes = _random(k=4)
    train = np.array([0.25, 0.05, 0.004, 0.10])  # 10% exactly is medium (head is > 10%)
    result = compute_metrics(y, p, classes, train_prevalence=train)
    groups = [result["per_class"][c]["group"] for c in classes]
    assert groups == ["head", "medium", "tail", "medium"]
    assert result["prevalence_source"] == "train"
    assert result["per_class"]["class 2"]["prevalence"] == pytest.approx(0.004)
    ap = [result["per_class"][c]["AP"] for c in classes]
    assert result["head_mAP"] == pytest.approx(ap[0])
    assert result["medium_mAP"] == pytest.approx((ap[1] + ap[3]) / 2)
    assert result["tail_mAP"] == pytest.approx(ap[2])


def test_groups_from_evaluated_labels_without_training_prevalence_and_empty_group_is_null():
    n = 200
    y = np.zeros((n, 2), dtype=int)
    y[:50, 0] = 1  # 25%: head
    y[:10, 1] = 1  # 5%: medium
    p = np.random.default_rng(0).random((n, 2))
    result = compute_metrics(y, p, ["a", "b"])
    assert result["per_class"]["a"]["group"] == "head" and result["per_class"]["b"]["group"] == "medium"
    assert result["prevalence_source"] == "eval"
    assert result["tail_mAP"] is None


def test_threshold_is_used_for_f1():
    y = np.array([[1], [1], [0], [0]])
    p = np.array([[0.7], [0.4], [0.3], [0.45]])
    assert compute_metrics(y, p, ["a"])["mF1"] == pytest.approx(f1_score([1, 1, 0, 0], [1, 0, 0, 0]))
    assert compute_metrics(y, p, ["a"], threshold=0.35)["mF1"] == pytest.approx(f1_score([1, 1, 0, 0], [1, 1, 0, 1]))


def test_bootstrap_intervals_contain_estimate_and_are_deterministic():
    y, p, classes = _random(n=200, k=4, seed=3)
    point = compute_metrics(y, p, classes)
    first = bootstrap_intervals(y, p, classes, n=40, seed=7)
    again = bootstrap_intervals(y, p, classes, n=40, seed=7)
    other = bootstrap_intervals(y, p, classes, n=40, seed=8)
    assert first == again
    assert first != other
    for key in ("mAP", "mAUROC", "mF1", "mECE"):
        low, high = first["intervals"][key]
        assert low <= point[key] <= high
        assert low < high


def test_bootstrap_keeps_groups_fixed_and_tolerates_rare_classes():
    y, p, classes = _random(n=100, k=3, seed=4)
    y[:, 0] = 0
    y[0, 0] = 1  # one positive: many replicates lose it, which must not crash or score 0
    result = bootstrap_intervals(y, p, classes, n=30, seed=0, train_prevalence=np.array([0.005, 0.05, 0.5]))
    assert result["intervals"]["tail_mAP"] is not None  # replicates that kept the positive
    assert result["n"] == 30 and result["level"] == 0.95


def test_json_safe_converts_numpy_and_non_finite():
    obj = {"a": np.float32(0.5), "b": [np.int64(3), float("nan")], "c": (np.inf, -np.inf), "d": np.array([1.0, np.nan]),
           "e": np.bool_(True), "f": None, "g": "text"}
    safe = json_safe(obj)
    assert safe == {"a": 0.5, "b": [3, None], "c": [None, None], "d": [1.0, None], "e": True, "f": None, "g": "text"}
    assert isinstance(safe["b"][0], int) and isinstance(safe["e"], bool)
    json.dumps(safe, allow_nan=False)


def test_bad_inputs_are_programming_errors():
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b"])
    with pytest.raises(ValueError):
        compute_metrics(np.full((3, 1), 2), np.zeros((3, 1)), ["a"])
    with pytest.raises(ValueError):
        compute_metrics(np.ones((3, 1)), np.full((3, 1), math.nan), ["a"])


def test_chance_map_is_the_mean_prevalence_of_the_scored_classes():
    """What a random ranking scores: the printed baseline next to every mAP (stage logs, evaluate)."""
    from chexfusion.training import summary_line

    y = np.zeros((10, 3))
    y[:2, 0] = 1  # prevalence 0.2
    y[:5, 1] = 1  # prevalence 0.5; class 2 has no positive: no AP, left out like in mAP
    result = compute_metrics(y, np.random.default_rng(0).random((10, 3)), ["a", "b", "c"])
    assert result["chance_mAP"] == pytest.approx(0.35)
    assert "(chance 0.350)" in summary_line(result)


def test_chance_ap_is_the_evaluation_prevalence_whatever_the_grouping():
    """What a zero-shot AP is read against: the AP random rankings reach on these labels, not the training
    prevalence."""
    y, p, classes = _random()
    y[:, 2] = 0
    result = compute_metrics(y, p, classes, train_prevalence=np.full(len(classes), 0.5))
    rng = np.random.default_rng(1)
    for k, name in enumerate(classes):
        chance = result["per_class"][name]["chance_AP"]
        assert result["per_class"][name]["prevalence"] == 0.5
        if k == 2:
            assert chance is None  # no positives: no AP, no chance level either
            continue
        assert chance == pytest.approx(y[:, k].mean())
        random_aps = [average_precision_score(y[:, k], rng.random(len(y))) for _ in range(200)]
        assert np.mean(random_aps) == pytest.approx(chance, abs=0.02)
    assert result["chance_mAP"] == pytest.approx(np.mean([y[:, k].mean() for k in range(len(classes)) if k != 2]))
