"""``chexfusion compare``: paired DeLong and bootstrap tests between models, corrections, ranking stability."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from chexfusion.delong import delong_test
from chexfusion.paired_bootstrap import adjust_p_values, bootstrap_maps, paired_difference, rank_distribution
from chexfusion.predictions import write_predictions

CLASSES = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Fracture"]
RATES = [0.35, 0.2, 0.08, 0.04]


@pytest.fixture
def models(tmp_path):
    """labels.csv (studies of two images sharing labels and predictions) and three models' predictions."""
    rng = np.random.default_rng(0)
    n_studies = 120
    y_study = (rng.random((n_studies, len(CLASSES))) < RATES).astype(int)
    y_study[:2, 3] = 1
    y = np.repeat(y_study, 2, axis=0)
    frame = pd.DataFrame({"dicom_id": [f"img{i:04d}" for i in range(len(y))],
                          "study_id": [f"s{i // 2}" for i in range(len(y))],
                          "fpath": [f"files/img{i:04d}.jpg" for i in range(len(y))]})
    for k, name in enumerate(CLASSES):
        frame[name] = y[:, k]
    frame.to_csv(tmp_path / "labels.csv", index=False)
    probs = {}
    for name, signal in (("strong", 0.5), ("weak", 0.25), ("noise", 0.0)):
        p = np.repeat(np.clip(signal * y_study + (1 - signal) * rng.random(y_study.shape), 0, 1), 2, axis=0)
        order = rng.permutation(len(y))  # each file in its own row order
        write_predictions(tmp_path / f"{name}.csv", frame["dicom_id"][order], frame["study_id"][order], CLASSES,
                          p[order])
        probs[name] = p
    return tmp_path, y, probs, frame["study_id"].to_numpy()


def _compare(run_cli, folder, *extra, names=("strong", "weak", "noise")):
    args = ["compare", "--labels", folder / "labels.csv"]
    for name in names:
        args += ["--pred", folder / f"{name}.csv"]
    return run_cli(*args, *extra)


def test_compare_writes_tests_that_match_their_definitions(models, run_cli):
    folder, y, probs, studies = models
    code, stdout, stderr = _compare(run_cli, folder, "--bootstrap", 60, "--out", folder / "cmp")
    assert code == 0, stderr
    result = json.loads((folder / "cmp" / "compare.json").read_text())
    assert [m["name"] for m in result["models"]] == ["strong", "weak", "noise"]
    assert result["n_images"] == 240 and result["n_studies"] == 120 and result["unit"] == "study"
    first = result["pairs"][0]
    assert (first["reference"], first["model"]) == ("strong", "weak")
    assert first["maps"]["mAP"]["a"] == pytest.approx(average_precision_score(y, probs["strong"]), abs=1e-9)
    assert first["maps"]["mAP"]["b"] == pytest.approx(average_precision_score(y, probs["weak"]), abs=1e-9)
    for k, name in enumerate(CLASSES):
        expected = delong_test(y[:, k], probs["strong"][:, k], probs["weak"][:, k], clusters=studies)
        assert first["per_class"][name]["p"] == pytest.approx(expected["p"], rel=1e-9)
        assert first["per_class"][name]["auc_a"] == pytest.approx(expected["auc_a"], abs=1e-12)
    raw = [first["per_class"][c]["p"] for c in CLASSES]
    assert [first["per_class"][c]["p_adjusted"] for c in CLASSES] == pytest.approx(adjust_p_values(raw, "holm"))
    noise = result["pairs"][1]
    assert noise["mAUROC"]["p"] < 0.001 and noise["maps"]["mAP"]["ci"][0] > 0  # a real gap is found
    shares = np.array(result["ranking"]["rank_share"])
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert result["ranking"]["rank"] == [1, 2, 3]
    markdown = (folder / "cmp" / "compare.md").read_text()
    assert "## strong vs weak" in markdown and "p (holm)" in markdown and "Ranking stability" in markdown
    assert stdout.startswith(markdown)


def test_paired_bootstrap_is_reproducible_for_a_seed(models, run_cli):
    folder, _, _, _ = models
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        code, _, stderr = _compare(run_cli, folder, "--bootstrap", 30, "--seed", seed, "--out", folder / name,
                                   names=("strong", "weak"))
        assert code == 0, stderr
        runs.append(json.loads((folder / name / "compare.json").read_text()))
    assert runs[0]["pairs"] == runs[1]["pairs"] and runs[0]["ranking"] == runs[1]["ranking"]
    assert runs[0]["pairs"][0]["maps"] != runs[2]["pairs"][0]["maps"]


def test_bootstrap_scores_every_model_on_the_same_studies(models):
    _, y, probs, studies = models
    valid = np.ones_like(y, dtype=bool)
    groups = ["head", "head", "medium", "medium"]
    both = bootstrap_maps(y, [probs["strong"], probs["strong"]], valid, groups, studies, n=20, seed=1)
    np.testing.assert_array_equal(both["mAP"][:, 0], both["mAP"][:, 1])  # same rows for both models
    same = paired_difference(0.5, 0.5, both["mAP"][:, 0], both["mAP"][:, 1])
    assert same["diff"] == 0.0 and same["p"] == 1.0
    alone = bootstrap_maps(y, [probs["strong"]], valid, groups, studies, n=20, seed=1)
    np.testing.assert_array_equal(alone["mAP"][:, 0], both["mAP"][:, 0])
    # by study: the two identical images of a study carry one study's evidence, like one image each
    single = bootstrap_maps(y[::2], [probs["strong"][::2]], valid[::2], groups, None, n=20, seed=1)
    np.testing.assert_allclose(single["mAP"][:, 0], alone["mAP"][:, 0], atol=1e-12)


def test_holm_and_bonferroni_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, None]
    # Holm: sorted 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 -> max(0.06, 0.04)
    assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02, None])
    assert adjust_p_values(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02, None])
    assert adjust_p_values([0.5, 0.9], "bonferroni") == [1.0, 1.0]


def test_rank_distribution_counts_ties_as_the_better_rank():
    result = rank_distribution(np.array([0.3, 0.2, 0.1]), np.array([[0.3, 0.2, 0.1], [0.2, 0.3, 0.1],
                                                                    [0.2, 0.2, 0.3], [np.nan, 0.1, 0.2]]))
    assert result["rank"] == [1, 2, 3] and result["n_replicates"] == 3
    assert result["rank_share"][0] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert result["rank_share"][2] == pytest.approx([1 / 3, 0.0, 2 / 3])


def _assert_user_error(code, err, *must_contain):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chexfusion: error: "), err
    for text in must_contain:
        assert text in lines[0], lines[0]


def test_compare_user_errors_exit_2_with_one_line(models, run_cli):
    folder, _, _, _ = models
    code, _, err = _compare(run_cli, folder, names=("strong",))
    _assert_user_error(code, err, "at least two")
    weak = pd.read_csv(folder / "weak.csv", dtype=str)
    weak.iloc[:-3].to_csv(folder / "short.csv", index=False)
    code, _, err = _compare(run_cli, folder, names=("strong", "short"))
    _assert_user_error(code, err, "short.csv", "3 dicom_id(s)", "no prediction")
    weak.drop(columns=["Fracture"]).to_csv(folder / "fewer.csv", index=False)
    code, _, err = _compare(run_cli, folder, names=("strong", "fewer"))
    _assert_user_error(code, err, "fewer.csv", "'Fracture'")
    code, _, err = _compare(run_cli, folder, "--names", "only-one", names=("strong", "weak"))
    _assert_user_error(code, err, "--names", "1 names for 2")
