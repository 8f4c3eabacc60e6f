"""``make ablate``: shared vs per-view backbones and the stage-2 loss, trained where missing, then the tables."""

from __future__ import annotations

import json

import pipeline
import pytest
import yaml

from chexfusion.ablate import main as ablate

pytestmark = pytest.mark.slow


def _write(path, entries):
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def configs(tiny_data, tmp_path_factory, repo_root):
    """Small versions of the five demo configs, inheriting the repository's, with everything under tmp."""
    tmp = tmp_path_factory.mktemp("ablate")
    data = {"image_root": str(tiny_data), "train_csv": str(tiny_data / "train.csv"),
            "val_csv": str(tiny_data / "development.csv"), "test_csv": str(tiny_data / "test.csv")}
    s1 = _write(tmp / "s1.yaml", {
        "inherit": str(repo_root / "stage1" / "config.yaml"), "name": "shared", "output_dir": str(tmp / "s1"),
        "data": {**data, "image_size": pipeline.IMAGE_SIZE},
        "model": {"decoder_dim": 32, "decoder_ff_dim": 64, "decoder_heads": 4},
        "train": {"epochs": 1, "batch_size": 16}})
    frontal = _write(tmp / "s1-frontal.yaml", {"inherit": "s1.yaml", "name": "frontal", "data": {"views": "frontal"}})
    lateral = _write(tmp / "s1-lateral.yaml", {"inherit": "s1.yaml", "name": "lateral", "data": {"views": "lateral"}})
    s2 = _write(tmp / "s2.yaml", {
        "inherit": str(repo_root / "stage2" / "config.yaml"), "name": "shared", "output_dir": str(tmp / "s2"),
        "data": data, "features": {"store": str(tmp / "store"), "shared_backbone": str(tmp / "s1" / "shared")},
        "model": {"dim": 32, "ff_dim": 64, "heads": 4, "decoder_ff_dim": 64, "decoder_heads": 4},
        "train": {"epochs": 1, "batch_size": 8}})
    per_view = _write(tmp / "s2-per-view.yaml", {
        "inherit": "s2.yaml", "name": "per-view",
        "features": {"store": str(tmp / "store-per-view"), "routing": "per_view",
                     "frontal_backbone": str(tmp / "s1" / "frontal"),
                     "lateral_backbone": str(tmp / "s1" / "lateral"), "unknown_view": "frontal"}})
    return {"tmp": tmp, "args": ["--stage1-config", s1, "--frontal-config", frontal, "--lateral-config", lateral,
                                 "--stage2-config", s2, "--per-view-config", per_view]}


def test_ablate_trains_what_is_missing_and_writes_both_tables(configs, capsys):
    out = configs["tmp"] / "ablations"
    argv = [str(a) for a in configs["args"]] + ["--losses", "bce,weighted_asl", "--out", str(out)]
    assert ablate(argv) == 0
    routing = json.loads((out / "routing.json").read_text())
    assert set(routing["rows"]) == {"baseline", "shared", "per_view"}
    assert all(0.0 <= row["mAP"] <= 1.0 for row in routing["rows"].values())
    # the view-only findings of the synthetic data get their own columns
    assert routing["view_only_classes"]["lateral_only"] and "lateral_only_AP" in routing["rows"]["shared"]
    losses = json.loads((out / "stage2-losses.json").read_text())
    assert list(losses["rows"]) == ["bce", "weighted_asl"]
    # the config's own loss is the stage-2 run already trained, the other one a run of its own
    shared_test = json.loads((configs["tmp"] / "s2" / "shared" / "metrics.json").read_text())["test"]
    assert losses["rows"]["weighted_asl"]["mAP"] == pytest.approx(shared_test["mAP"])
    bce_run = configs["tmp"] / "s2" / "shared-loss-bce"
    assert yaml.safe_load((bce_run / "config.yaml").read_text())["loss"] == {"name": "bce", "params": {}}
    text = (out / "stage2-losses.md").read_text()
    assert "| bce |" in text and "| weighted_asl |" in text

    # a second run trains nothing and writes the same tables
    capsys.readouterr()
    assert ablate(argv) == 0
    assert "epoch 1" not in capsys.readouterr().out
    assert json.loads((out / "stage2-losses.json").read_text()) == losses


@pytest.mark.parametrize("losses, message", [("bce,hinge", "unknown loss 'hinge'"), ("bce,,asl",
                                                                                     "--losses: empty name"),
                                             ("bce,bce", "--losses: 'bce' given twice")])
def test_a_bad_loss_list_is_a_one_line_error(configs, capsys, losses, message):
    argv = [str(a) for a in configs["args"]] + ["--losses", losses, "--out", str(configs["tmp"] / "x")]
    assert ablate(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_no_loss_list_compares_routing_only():
    """``make compare`` runs ``ablate`` without --losses: that is the routing table alone, not an error."""
    from chexfusion.ablate import check_losses

    assert check_losses("") == []
