"""``model.head: linear`` (global average pooling, dropout, one FC), the head of seed 004 and the CXR-LT baselines,
in both stages: its formula on fixed numbers, padding left out of the mean, and the config rules."""

import pytest
import torch

from chexfusion.config import load_config
from chexfusion.errors import UserError
from chexfusion.models.linear_head import LinearHead
from chexfusion.stage1.config import Stage1Config
from chexfusion.stage2.config import Stage2Config
from chexfusion.stage2.model import build_fusion_model


def test_logits_are_the_fc_of_the_mean_of_the_real_tokens():
    head = LinearHead(3, 4).eval()
    tokens = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    padding = torch.tensor([[False, False, True], [False, False, False]])
    logits, weights = head(tokens, key_padding_mask=padding, return_attention=True)
    means = torch.stack([tokens[0, :2].mean(0), tokens[1].mean(0)])
    expected = means @ head.classifier.weight.T + head.classifier.bias
    assert torch.allclose(logits, expected, atol=1e-5)
    assert weights.shape == (2, 3, 3)
    assert torch.allclose(weights[0, :, 2], torch.zeros(3)) and torch.allclose(weights.sum(-1), torch.ones(2, 3))


def test_whatever_a_padding_token_holds_changes_nothing():
    head = LinearHead(5, 8).eval()
    tokens = torch.randn(1, 6, 8)
    padding = torch.tensor([[False] * 4 + [True] * 2])
    garbage = tokens.clone()
    garbage[0, 4:] = 1e6
    assert torch.equal(head(tokens, key_padding_mask=padding), head(garbage, key_padding_mask=padding))


def test_no_queries_and_a_dropout_in_range():
    with pytest.raises(ValueError, match="no queries"):
        LinearHead(2, 4)(torch.randn(1, 3, 4), queries=torch.randn(2, 4))
    with pytest.raises(UserError, match="dropout must be in"):
        LinearHead(2, 4, dropout=1.0)


def test_stage2_builds_its_fusion_on_a_linear_head():
    cfg = load_config(Stage2Config, "stage2/config.yaml", ["model.head=linear", "model.dim=32", "model.heads=4",
                                                           "model.ff_dim=64"])
    model = build_fusion_model(cfg, 7, (16, 4, 4)).eval()
    assert isinstance(model.decoder, LinearHead)
    logits = model(torch.randn(2, 2, 16, 4, 4), torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=bool))
    assert logits.shape == (2, 7)


@pytest.mark.parametrize("config_class, path, overrides, message", [
    (Stage1Config, "stage1/config.yaml", ["model.head=mlp"], "must be one of ml_decoder, csra, linear"),
    (Stage2Config, "stage2/config.yaml", ["model.head=csra"], "must be one of ml_decoder, linear"),
    (Stage2Config, "stage2/config.yaml", ["model.head=linear", "model.queries=text"], "learned class vectors only"),
])
def test_a_head_the_stage_lacks_is_a_config_error(config_class, path, overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(config_class, path, overrides)


def test_a_stage1_run_on_a_linear_head_trains_and_predicts_from_its_folder(tiny_data, tmp_path, repo_root,
                                                                           monkeypatch, run_cli):
    import pipeline

    monkeypatch.chdir(repo_root)
    run = pipeline.train_stage1(tiny_data, tmp_path / "runs", name="linear", **{"model.head": "linear",
                                                                                 "model.decoder_dropout": 0.5})
    code, _, err = run_cli("predict", "--model", run, "--csv", tiny_data / "test.csv", "--image-root", tiny_data,
                           "--out", tmp_path / "pred.csv")
    assert code == 0, err
    from chexfusion.predictions import read_predictions

    ids, classes, probs = read_predictions(tmp_path / "pred.csv")
    assert len(ids) > 0 and probs.shape == (len(ids), len(classes)) and ((probs > 0) & (probs < 1)).all()
