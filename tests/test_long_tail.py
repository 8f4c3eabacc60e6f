"""The CXR-LT 2026 winner's pieces, each against its paper's formula on fixed numbers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chexfusion.errors import UserError
from chexfusion.losses import build_loss
from chexfusion.models.csra import CSRAHead
from chexfusion.normal_gating import normal_gate
from chexfusion.sampling import RepeatFactorSampler, SamplingConfig, repeat_factors

PREVALENCE = np.array([0.5, 0.1, 0.02])
LOGITS = torch.tensor([[1.0, -2.0, 0.5], [-0.5, 0.3, -3.0], [0.2, 0.1, -0.1]])
TARGETS = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])


def softplus(x):
    return np.log1p(np.exp(x))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_distribution_balanced_loss_is_the_papers_formula():
    alpha, beta, mu, kappa, lam = 0.1, 10.0, 0.2, 0.05, 2.0
    loss = build_loss("distribution_balanced", {}, PREVALENCE)  # the authors' defaults
    z, y, p = LOGITS.double().numpy(), TARGETS.double().numpy(), PREVALENCE
    inverse = 1 / p
    expected = np.zeros_like(z)
    for k in range(3):
        instance = (y[k] * inverse).sum()
        r = inverse / instance if instance > 0 else np.full(3, np.inf)
        r_hat = alpha + sigmoid(beta * (r - mu))
        nu = -kappa * np.log(p / (1 - p))
        shifted = z[k] - nu
        expected[k] = r_hat * (y[k] * softplus(-shifted) + (1 - y[k]) * softplus(lam * shifted) / lam)
    assert float(loss(LOGITS, TARGETS)) == pytest.approx(expected.mean(), rel=1e-5)
    # an image with no positive gets alpha + 1 on every class; a rare class's weight on an image with a head class
    weights = loss.rebalancing_weight(TARGETS)
    assert weights[2].tolist() == pytest.approx([1.1] * 3)
    assert float(weights[0, 0]) == pytest.approx(alpha + sigmoid(beta * ((1 / 0.5) / (1 / 0.5 + 1 / 0.1) - mu)))


def test_logit_adjusted_loss_is_bce_on_prior_shifted_logits():
    tau = 1.5
    loss = build_loss("logit_adjusted", {"tau": tau}, PREVALENCE)
    offset = tau * np.log(PREVALENCE / (1 - PREVALENCE))
    expected = F.binary_cross_entropy_with_logits(LOGITS + torch.tensor(offset, dtype=torch.float32), TARGETS)
    assert float(loss(LOGITS, TARGETS)) == pytest.approx(float(expected), rel=1e-6)
    mask = torch.tensor([[1.0, 0.0, 1.0]] * 3)  # masked entries count for nothing, as in every loss
    per_entry = F.binary_cross_entropy_with_logits(LOGITS + torch.tensor(offset, dtype=torch.float32), TARGETS,
                                                   reduction="none")
    assert float(loss(LOGITS, TARGETS, mask)) == pytest.approx(float((per_entry * mask).sum() / mask.sum()), rel=1e-6)


def test_long_tail_losses_refuse_unknown_parameters_and_need_prevalence():
    with pytest.raises(UserError, match="loss 'logit_adjusted' has no parameter 'gamma'"):
        build_loss("logit_adjusted", {"gamma": 1}, PREVALENCE)
    with pytest.raises(UserError, match="needs the class prevalence"):
        build_loss("distribution_balanced", {}, None)


def test_repeat_factors_follow_lvis():
    # class frequencies 4/8, 1/8, 2/8; t = 0.5: r_c = max(1, sqrt(0.5 / f_c)) = 1, 2, sqrt(2)
    labels = np.zeros((8, 3))
    labels[:4, 0] = 1
    labels[4, 1] = 1
    labels[[0, 5], 2] = 1
    factors = repeat_factors(labels, threshold=0.5)
    assert factors.tolist() == pytest.approx([np.sqrt(2), 1, 1, 1, 2, np.sqrt(2), 1, 1])
    assert repeat_factors(labels, threshold=0.5, max_repeat=1.2).max() == pytest.approx(1.2)


def test_repeat_factor_sampler_draws_each_image_floor_or_ceil_times_at_a_fixed_length():
    factors = np.array([1.0, 2.5, 1.4, 3.0, 1.0])
    sampler = RepeatFactorSampler(factors, seed=3)
    lengths, seen = set(), []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        lengths.add(len(indices))
        counts = np.bincount(indices, minlength=5)
        assert np.all(counts >= np.floor(factors)) and np.all(counts <= np.ceil(factors))
        seen.append(indices)
    assert lengths == {round(factors.sum())} == {len(sampler)}
    sampler.set_epoch(2)
    assert list(sampler) == seen[2] and seen[2] != seen[3]  # the epoch fixes the draw (resume, every rank)
    with pytest.raises(UserError, match="sampling.method"):
        SamplingConfig(method="balanced").validate()


def test_normal_gating_scales_findings_by_the_abnormal_probability():
    probs = np.array([[0.8, 0.5, 0.9], [0.1, 0.4, 0.2]])
    classes = ["Finding A", "Normal", "Finding B"]
    gated = normal_gate(probs, classes, alpha=2.0)
    assert gated == pytest.approx(np.array([[0.8 * 0.25, 0.5, 0.9 * 0.25], [0.1 * 0.36, 0.4, 0.2 * 0.36]]))
    assert normal_gate(probs, classes, 0.0).tolist() == probs.tolist()
    with pytest.raises(UserError, match="needs a 'Normal' class"):
        normal_gate(probs, ["A", "B", "C"], 1.0)


def test_csra_logit_is_mean_score_plus_lambda_times_attention_pooled_score():
    head = CSRAHead(num_classes=2, in_dim=3, lam=0.1, temperature=2.0)
    weight = torch.tensor([[3.0, 0.0, 4.0], [0.0, 2.0, 0.0]])
    head.classifier.weight.data.copy_(weight)
    tokens = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])  # [1, L=4, C=3]
    logits, attention = head(tokens, return_attention=True)
    x, m = tokens[0].double().numpy(), weight.double().numpy()
    scores = x @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T  # [L, K]
    soft = np.exp(2.0 * scores) / np.exp(2.0 * scores).sum(axis=0)
    expected = scores.mean(axis=0) + 0.1 * (soft * scores).sum(axis=0)
    assert logits[0].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert attention.shape == (1, 2, 4) and attention.sum(dim=2)[0].tolist() == pytest.approx([1.0, 1.0])
    head.classifier.weight.data.mul_(7.0)  # class vectors are normalised: their length does not matter
    assert head(tokens)[0].tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_stage1_model_with_a_csra_head():
    from chexfusion.stage1.config import Stage1Config
    from chexfusion.stage1.model import build_image_model

    cfg = Stage1Config()
    cfg.model.head = "csra"
    model = build_image_model(cfg, num_classes=5)
    assert isinstance(model.decoder, CSRAHead)
    logits = model(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 5)
    cfg.model.queries = "text"
    with pytest.raises(UserError, match="model.head: csra"):
        cfg.validate()


def test_the_2026_configs_hold_the_winners_pieces(repo_root):
    from chexfusion.config import load_config
    from chexfusion.stage1.config import Stage1Config

    for name in ("cxr-lt-2026.yaml", "cxr-lt-2026-demo.yaml"):
        cfg = load_config(Stage1Config, repo_root / "stage1" / name)
        cfg.validate()
        assert (cfg.model.head, cfg.model.csra_lambda, cfg.loss.name) == ("csra", 0.1, "distribution_balanced")
        assert (cfg.sampling.method, cfg.sampling.threshold, cfg.sampling.max_repeat) == ("repeat_factor", 0.01, 10)
        assert cfg.data.intensity == "percentile"
    real = load_config(Stage1Config, repo_root / "stage1" / "cxr-lt-2026.yaml")
    assert real.model.backbone.startswith("convnextv2_base") and real.data.image_size == 512
