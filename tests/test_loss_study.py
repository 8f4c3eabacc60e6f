"""``chexfusion ablate --study losses``: each loss through both stages over seeds, its table and its errors."""

from __future__ import annotations

import json

import numpy as np
import pipeline
import pytest
import yaml

from chexfusion import loss_study
from chexfusion.ablate import main as ablate
from chexfusion.losses import loss_parameters


def _fake_pair(calls):
    """A stand-in for training both stages: figures that depend on the loss, the seed and the stage."""

    def train_pair(stage1_cfg, stage2_cfg, split):
        calls.append((stage1_cfg, stage2_cfg))
        base = {"bce": 0.1, "ral": 0.2}[stage1_cfg.loss.name] + 0.01 * stage1_cfg.seed
        return {stage: {c: base + offset + 0.001 * i for i, c in enumerate(loss_study.COLUMNS)}
                for stage, offset in (("stage1", 0.0), ("stage2", 0.5))}

    return train_pair


def _configs(repo_root, stage2="config.yaml"):
    return ["--stage1-config", str(repo_root / "stage1" / "config.yaml"),
            "--stage2-config", str(repo_root / "stage2" / stage2)]


def test_the_table_is_the_mean_and_sample_std_over_seeds_with_every_parameter(monkeypatch, tmp_path, capsys,
                                                                             repo_root):
    calls = []
    monkeypatch.setattr(loss_study, "train_pair", _fake_pair(calls))
    out = tmp_path / "ablations"
    assert ablate([*_configs(repo_root), "--study", "losses", "--losses", "bce,ral:class_weighted=true",
                   "--seeds", "0,2", "--stage1-set", "train.epochs=1", "--stage2-set", "features.store=/tmp/store",
                   "--out", str(out)]) == 0
    # every loss x seed trained once, stage 1 and 2 with the same loss, seed and run names
    assert [(s1.loss.name, s1.seed) for s1, _ in calls] == [("bce", 0), ("bce", 2), ("ral", 0), ("ral", 2)]
    s1, s2 = calls[3]
    assert s1.name == "demo-loss-ral-class_weighted-true-seed2" == s2.name and s1.train.epochs == 1
    assert s2.features.store == "/tmp/store-loss-ral-class_weighted-true-seed2"
    assert s2.features.shared_backbone == f"{s1.output_dir}/{s1.name}" and s2.loss == s1.loss
    assert s1.loss.params == loss_parameters("ral", {"class_weighted": True})

    result = json.loads((out / "losses.json").read_text())
    rows = result["rows"]
    assert [(r["loss"], r["stage"]) for r in rows] == [("bce", "stage1"), ("bce", "stage2"),
                                                      ("ral-class_weighted-true", "stage1"),
                                                      ("ral-class_weighted-true", "stage2")]
    ral_stage2 = rows[3]
    assert ral_stage2["mAP"]["mean"] == pytest.approx(np.mean([0.7, 0.72]))
    assert ral_stage2["mAP"]["std"] == pytest.approx(np.std([0.7, 0.72], ddof=1))
    assert (ral_stage2["mAP"]["min"], ral_stage2["mAP"]["max"]) == pytest.approx((0.7, 0.72))
    assert ral_stage2["group_avg_mAP"]["mean"] == pytest.approx(0.71 + 0.005)
    assert ral_stage2["params"]["class_weighted"] is True and ral_stage2["params"]["weights"] == "chexfusion"
    assert rows[0]["params"] == {}  # bce has none
    text = (out / "losses.md").read_text()
    assert "| ral-class_weighted-true | stage 1, max over images | 0.210 ± 0.014 |" in text
    assert "lamb=1.5" in text and "class_weighted=True" in text and "seeds 0, 2" in text
    assert "wrote" in capsys.readouterr().out


def test_one_seed_has_zero_spread_and_a_missing_figure_stays_missing():
    assert loss_study.spread([0.3]) == {"mean": 0.3, "std": 0.0, "min": 0.3, "max": 0.3}
    assert loss_study.spread([0.3, None])["mean"] is None


def test_the_demo_configs_loss_keeps_its_parameters():
    from chexfusion.stage1.config import LossConfig

    config_loss = LossConfig("weighted_asl", {"gamma_neg": 4, "gamma_pos": 1, "clip": 0.05})
    losses = loss_study.parse_study_losses("weighted_asl,asl,weighted_bce:weights=ratio", config_loss)
    assert [loss.label for loss in losses] == ["weighted_asl", "asl", "weighted_bce-weights-ratio"]
    assert losses[0].params["gamma_pos"] == 1 and losses[1].params["gamma_pos"] == 0
    assert losses[2].params == {"weights": "ratio"}


@pytest.mark.parametrize("argv, stage2, message", [
    (["--losses", "bce,hinge"], "config.yaml", "--losses 'hinge': unknown loss 'hinge'"),
    (["--losses", "asl:gama_neg=2"], "config.yaml", "--losses 'asl:gama_neg=2': loss 'asl' has no parameter"),
    (["--losses", "ral:weights=ratio"], "config.yaml", "applies to its class-weighted form only"),
    (["--losses", "focal:gamma"], "config.yaml", "'gamma' is not key=value"),
    (["--losses", "bce,bce"], "config.yaml", "--losses: 'bce' given twice"),
    (["--seeds", "0,x"], "config.yaml", "--seeds: 'x' is not a non-negative integer"),
    (["--seeds", "1,1"], "config.yaml", "--seeds: '1' given twice"),
    ([], "per-view.yaml", "features.routing must be shared"),
])
def test_a_bad_study_is_a_one_line_error_before_anything_trains(argv, stage2, message, monkeypatch, capsys,
                                                                tmp_path, repo_root):
    monkeypatch.setattr(loss_study, "train_pair", lambda *a: pytest.fail("trained despite a bad argument"))
    assert ablate([*_configs(repo_root, stage2), "--study", "losses", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_study_trains_both_stages_per_loss_and_seed_then_reuses_them(tiny_data, tmp_path, repo_root, capsys):
    """The tiny pipeline, 2 losses x 2 seeds at one epoch each: real runs, then a second call that trains nothing."""
    data = {"image_root": str(tiny_data), "train_csv": str(tiny_data / "train.csv"),
            "val_csv": str(tiny_data / "development.csv"), "test_csv": str(tiny_data / "test.csv")}
    s1 = tmp_path / "s1.yaml"
    s1.write_text(yaml.safe_dump({
        "inherit": str(repo_root / "stage1" / "config.yaml"), "name": "tiny", "output_dir": str(tmp_path / "s1"),
        "data": {**data, "image_size": pipeline.IMAGE_SIZE},
        "model": {"decoder_dim": 32, "decoder_ff_dim": 64, "decoder_heads": 4},
        "train": {"epochs": 1, "batch_size": 16}}))
    s2 = tmp_path / "s2.yaml"
    s2.write_text(yaml.safe_dump({
        "inherit": str(repo_root / "stage2" / "config.yaml"), "name": "tiny", "output_dir": str(tmp_path / "s2"),
        "data": data, "features": {"store": str(tmp_path / "store")},
        "model": {"dim": 32, "ff_dim": 64, "heads": 4, "decoder_ff_dim": 64, "decoder_heads": 4},
        "train": {"epochs": 1, "batch_size": 8}}))
    argv = ["--study", "losses", "--stage1-config", str(s1), "--stage2-config", str(s2), "--losses",
            "bce,reweighted:a=0.5", "--seeds", "0,1", "--out", str(tmp_path / "out")]
    assert ablate(argv) == 0
    rows = json.loads((tmp_path / "out" / "losses.json").read_text())["rows"]
    assert [(r["loss"], r["stage"]) for r in rows] == [("bce", "stage1"), ("bce", "stage2"),
                                                      ("reweighted-a-0.5", "stage1"), ("reweighted-a-0.5", "stage2")]
    run = tmp_path / "s2" / "tiny-loss-reweighted-a-0.5-seed1"
    stage2_test = json.loads((run / "metrics.json").read_text())["test"]
    assert rows[3]["seeds"]["1"]["mAP"] == pytest.approx(stage2_test["mAP"])
    assert all(0.0 <= rows[i]["mAP"]["mean"] <= 1.0 for i in range(4))
    # each run's config records the loss with all its parameters, stage 2 reads its own stage 1's store
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["loss"] == {"name": "reweighted", "params": loss_parameters("reweighted", {"a": 0.5})}
    assert config["seed"] == 1 and config["features"]["shared_backbone"].endswith("tiny-loss-reweighted-a-0.5-seed1")

    capsys.readouterr()
    assert ablate(argv) == 0
    second = capsys.readouterr()
    assert "epoch 1" not in second.out + second.err  # every run finished: nothing trained again
    assert json.loads((tmp_path / "out" / "losses.json").read_text())["rows"] == rows
