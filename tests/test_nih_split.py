"""`chexfusion convert --format nih`: NIH ChestX-ray14 split 70/10/20 by patient (seed 004's split), and the
seed-004 configs that train on it."""

import numpy as np
import pytest

from chexfusion.config import load_config
from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.data.splits import split_by_patient
from chexfusion.errors import UserError
from chexfusion.stage1.config import Stage1Config

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "No Finding", "Hernia|Mass", "Pleural_Thickening"]


def _nih_csv(path, n_patients=40, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    for patient in range(1, n_patients + 1):
        for visit in range(int(rng.integers(1, 5))):
            label = LABELS[int(rng.integers(len(LABELS)))]
            lines.append(f"{patient:08d}_{visit:03d}.png,{label},{visit},{patient},50,M,{'PA' if visit else 'AP'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_patient_split_is_seeded_disjoint_and_near_its_shares():
    patients = np.repeat(np.arange(500), 3)
    parts = split_by_patient(patients, [0.7, 0.1, 0.2], seed=4)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1500))
    groups = [set(patients[p]) for p in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert [len(g) for g in groups] == [350, 50, 100]
    again = split_by_patient(patients, [0.7, 0.1, 0.2], seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[1], split_by_patient(patients, [0.7, 0.1, 0.2], seed=5)[1])


def test_convert_nih_writes_three_cxr_lt_csvs_with_the_14_labels(run_cli, tmp_path):
    csv = _nih_csv(tmp_path / "Data_Entry_2017.csv")
    code, out, err = run_cli("convert", "--format", "nih", "--labels", csv, "--image-root", tmp_path,
                             "--out", tmp_path / "split", "--seed", "3")
    assert code == 0, err
    tables = {name: read_cxr_lt(tmp_path / "split" / f"{name}.csv") for name in ("train", "val", "test")}
    assert len(tables["train"].classes) == 14 and "Pleural Effusion" in tables["train"].classes
    patients = [set(t.frame["subject_id"]) for t in tables.values()]
    assert sum(len(p) for p in patients) == 40 and len(set.union(*patients)) == 40
    assert sum(len(t) for t in tables.values()) == len(csv.read_text().splitlines()) - 1
    first = tables["train"].frame["fpath"].iloc[0]
    assert first.startswith("images/") and first.endswith(".png")


@pytest.mark.parametrize("split, message", [("70,30", "three shares"), ("70,x,20", "--split must list")])
def test_a_bad_split_is_a_one_line_error(run_cli, tmp_path, split, message):
    csv = _nih_csv(tmp_path / "Data_Entry_2017.csv")
    code, _, err = run_cli("convert", "--format", "nih", "--labels", csv, "--image-root", tmp_path,
                           "--out", tmp_path / "split", "--split", split)
    assert code == 2 and message in err and "Traceback" not in err


def test_too_few_patients_for_the_splits_is_refused():
    with pytest.raises(UserError, match="2 patients cannot fill 3 splits"):
        split_by_patient(["a", "b", "a"], [0.7, 0.1, 0.2], seed=0)


@pytest.mark.parametrize("path", ["stage1/chestxray14-004.yaml", "stage1/chestxray14-004-demo.yaml"])
def test_the_seed_004_configs_load_with_its_recipe(repo_root, monkeypatch, path):
    monkeypatch.chdir(repo_root)
    cfg = load_config(Stage1Config, path)
    assert (cfg.model.head, cfg.model.decoder_dropout, cfg.loss.name) == ("linear", 0.5, "reweighted")
    assert (cfg.train.optimizer, cfg.train.weight_decay, cfg.train.schedule, cfg.train.select_on) == (
        "adam", 0.01, "onecycle", "loss")
    assert (cfg.augment.policy, cfg.augment.random_erasing) == ("original", 0.25)
    wbce = load_config(Stage1Config, path, ["loss.name=weighted_bce", "loss.params={weights: ratio}"])
    assert wbce.loss.params == {"weights": "ratio"}
