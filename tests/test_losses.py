"""Each loss equals its published formula (computed here with plain ``math``), honours the ignore mask
exactly, stays finite at extreme logits, and ``build_loss`` refuses bad names and parameters by name."""

import math

import numpy as np
import pytest
import torch
import yaml

from chexfusion.errors import UserError
from chexfusion.losses import (
    LOSS_NAMES,
    AsymmetricLoss,
    BCELoss,
    FocalLoss,
    ReweightedLoss,
    RobustAsymmetricLoss,
    RobustTerms,
    WeightedBCELoss,
    build_loss,
    chexfusion_class_weights,
    loss_parameters,
    ratio_class_weights,
)

LOGITS = [[0.5, -1.0, 2.5], [2.0, 0.3, -3.0]]
TARGETS = [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
PREVALENCE = [0.02, 0.3, 0.6]


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def mean_of(per_entry):
    """Mean over all entries of a per-entry python function f(x, y, class_index)."""
    values = [per_entry(x, y, c) for row_x, row_y in zip(LOGITS, TARGETS) for c, (x, y) in enumerate(zip(row_x, row_y))]
    return sum(values) / len(values)


def value(loss, logits=LOGITS, targets=TARGETS, mask=None):
    out = loss(torch.tensor(logits), torch.tensor(targets), None if mask is None else torch.tensor(mask))
    return out.item()


def test_bce_matches_formula_including_soft_targets():
    expected = mean_of(lambda x, y, c: -(y * math.log(sig(x)) + (1 - y) * math.log(1 - sig(x))))
    assert value(BCELoss()) == pytest.approx(expected, rel=1e-6)
    soft = [[0.3, 0.9, 0.0], [1.0, 0.5, 0.1]]
    expected_soft = sum(
        -(y * math.log(sig(x)) + (1 - y) * math.log(1 - sig(x)))
        for rx, ry in zip(LOGITS, soft) for x, y in zip(rx, ry)
    ) / 6
    assert value(BCELoss(), targets=soft) == pytest.approx(expected_soft, rel=1e-6)


def test_class_weight_helpers():
    w_pos, w_neg = chexfusion_class_weights(PREVALENCE)
    assert w_pos == pytest.approx([math.exp(1 - p) for p in PREVALENCE])
    assert w_neg == pytest.approx([math.exp(p) for p in PREVALENCE])
    r_pos, r_neg = ratio_class_weights(PREVALENCE)
    assert r_pos == pytest.approx([(1 - p) / p for p in PREVALENCE])
    assert r_neg == pytest.approx([1.0, 1.0, 1.0])


def test_weighted_bce_matches_formula():
    w_pos, w_neg = [1.5, 2.0, 0.5], [0.7, 1.0, 3.0]
    expected = mean_of(lambda x, y, c: -(w_pos[c] * y * math.log(sig(x)) + w_neg[c] * (1 - y) * math.log(1 - sig(x))))
    assert value(WeightedBCELoss(w_pos, w_neg)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_matches_formula(alpha):
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1 - alpha)

    def focal(x, y, c):
        p = sig(x)
        return -(a_pos * y * (1 - p) ** 2 * math.log(p) + a_neg * (1 - y) * p**2 * math.log(1 - p))

    assert value(FocalLoss(gamma=2, alpha=alpha)) == pytest.approx(mean_of(focal), rel=1e-6)


def asl_entry(x, y, w_pos=1.0, w_neg=1.0, gamma_neg=4, gamma_pos=1, clip=0.05):
    p = sig(x)
    p_m = max(p - clip, 0.0)
    return -(w_pos * y * (1 - p) ** gamma_pos * math.log(p) + w_neg * (1 - y) * p_m**gamma_neg * math.log(1 - p_m))


def test_asl_matches_formula():
    expected = mean_of(lambda x, y, c: asl_entry(x, y))
    assert value(AsymmetricLoss()) == pytest.approx(expected, rel=1e-6)
    expected = mean_of(lambda x, y, c: asl_entry(x, y, gamma_neg=2, gamma_pos=0, clip=0.0))
    assert value(AsymmetricLoss(gamma_neg=2, gamma_pos=0, clip=0.0)) == pytest.approx(expected, rel=1e-6)


def test_weighted_asl_is_the_chexfusion_default_and_unit_weights_give_asl():
    w_pos = [math.exp(1 - p) for p in PREVALENCE]
    w_neg = [math.exp(p) for p in PREVALENCE]
    expected = mean_of(lambda x, y, c: asl_entry(x, y, w_pos[c], w_neg[c]))
    loss = build_loss("weighted_asl", {}, np.array(PREVALENCE))
    assert value(loss) == pytest.approx(expected, rel=1e-6)

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=generator) * 4
    targets = (torch.rand(8, 5, generator=generator) < 0.3).float()
    unit = AsymmetricLoss(pos_weight=np.ones(5), neg_weight=np.ones(5))
    assert torch.allclose(unit(logits, targets), AsymmetricLoss()(logits, targets), rtol=0, atol=1e-7)


def test_ral_matches_formula():
    lamb, eps_pos, eps_pos_pow, eps_neg, clip = 1.5, 1.0, -2.5, 0.0, 0.05

    def ral(x, y, c):
        p = sig(x)
        p_m = max(p - clip, 0.0)
        q = 1 - p_m
        positive = math.log(p) + eps_pos * (1 - p) + eps_pos_pow / 2 * (1 - p) ** 2  # gamma_pos = 0
        negative = p_m**4 * (math.log(q) + eps_neg * q) * (lamb - p) * p**2 * (lamb - q)
        return -(y * positive + (1 - y) * negative)

    assert value(RobustAsymmetricLoss()) == pytest.approx(mean_of(ral), rel=1e-6)
    assert value(build_loss("ral", {}, None)) == pytest.approx(mean_of(ral), rel=1e-6)


def test_ral_nonzero_epsilon_neg_and_gamma_pos():
    def ral(x, y, c):
        p = sig(x)
        p_m = max(p - 0.1, 0.0)
        q = 1 - p_m
        positive = (1 - p) ** 2 * (math.log(p) + 0.5 * (1 - p) + -1.0 / 2 * (1 - p) ** 2)
        negative = p_m**3 * (math.log(q) + 0.2 * q) * (2.0 - p) * p**2 * (2.0 - q)
        return -(y * positive + (1 - y) * negative)

    loss = RobustAsymmetricLoss(gamma_neg=3, gamma_pos=2, clip=0.1,
                                terms=RobustTerms(lamb=2.0, epsilon_pos=0.5, epsilon_pos_pow=-1.0, epsilon_neg=0.2))
    assert value(loss) == pytest.approx(mean_of(ral), rel=1e-6)


def test_reweighted_matches_formula_with_ratio_weights():
    w = [(1 - p) / p for p in PREVALENCE]

    def reweighted(x, y, c):
        p = sig(x)
        p_m = max(p - 0.05, 0.0)
        return y * (-0.2 * w[c] * (1 - p) * math.log(p)) + (1 - y) * (-(p_m**4) * math.log(1 - p_m))

    assert value(ReweightedLoss(w)) == pytest.approx(mean_of(reweighted), rel=1e-6)
    assert value(build_loss("reweighted", {}, np.array(PREVALENCE))) == pytest.approx(mean_of(reweighted), rel=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_mask_ignores_entries_exactly(name):
    loss = build_loss(name, {}, np.array(PREVALENCE))
    mask = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    masked = value(loss, mask=mask)
    # The loss over valid entries only: the mean of the entries computed one by one (not for the
    # distribution-balanced loss, whose weight couples a row's classes: tests/test_long_tail.py).
    singles = [
        value(_column_loss(name, c), logits=[[LOGITS[r][c]]], targets=[[TARGETS[r][c]]])
        for r in range(2) for c in range(3) if mask[r][c]
    ]
    if name != "distribution_balanced":
        assert masked == pytest.approx(sum(singles) / len(singles), rel=1e-6)
    # Whatever sits in an ignored entry (NaN target, -1, a wild logit) changes nothing.
    garbage_targets = [[TARGETS[0][0], float("nan"), TARGETS[0][2]], [-1.0, TARGETS[1][1], TARGETS[1][2]]]
    garbage_logits = [[LOGITS[0][0], 40.0, LOGITS[0][2]], [-40.0, LOGITS[1][1], LOGITS[1][2]]]
    logits = torch.tensor(garbage_logits, requires_grad=True)
    out = loss(logits, torch.tensor(garbage_targets), torch.tensor(mask))
    assert out.item() == pytest.approx(masked, rel=1e-6)
    out.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0
    assert torch.isfinite(logits.grad).all()


def _column_loss(name, column):
    """The same loss restricted to one class (its class weights sliced accordingly)."""
    return build_loss(name, {}, np.array(PREVALENCE[column : column + 1]))


def test_fractional_mask_is_a_weight_and_empty_mask_gives_zero():
    loss = BCELoss()
    mask = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    e00 = -math.log(sig(LOGITS[0][0]))
    e11 = -math.log(sig(LOGITS[1][1]))
    assert value(loss, mask=mask) == pytest.approx((2 * e00 + e11) / 3, rel=1e-6)
    logits = torch.tensor(LOGITS, requires_grad=True)
    out = loss(logits, torch.tensor(TARGETS), torch.zeros(2, 3))
    out.backward()
    assert out.item() == 0.0 and torch.equal(logits.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits_give_finite_loss_and_gradients(name, dtype):
    loss = build_loss(name, {}, np.array(PREVALENCE))
    logits = torch.tensor([[50.0, -50.0, 50.0], [-50.0, 50.0, -50.0]], dtype=dtype, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])  # right and confidently wrong entries
    out = loss(logits, targets)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert torch.isfinite(logits.grad).all()
    # A confidently wrong positive must still be pushed up (not a dead gradient).
    assert logits.grad[1, 0] < 0


def test_detached_focusing_keeps_value_but_changes_gradient():
    logits = torch.tensor(LOGITS, requires_grad=True)
    attached = AsymmetricLoss()(logits, torch.tensor(TARGETS))
    (g_attached,) = torch.autograd.grad(attached, logits)
    detached = AsymmetricLoss(detach_focusing=True)(logits, torch.tensor(TARGETS))
    (g_detached,) = torch.autograd.grad(detached, logits)
    assert attached.item() == pytest.approx(detached.item(), rel=1e-7)
    assert not torch.allclose(g_attached, g_detached)


def test_class_weight_count_must_match_logits():
    loss = build_loss("weighted_asl", {}, np.array(PREVALENCE))
    with pytest.raises(ValueError, match="3 classes"):
        loss(torch.zeros(2, 4), torch.zeros(2, 4))


@pytest.mark.parametrize(
    "name, params, prevalence, message",
    [
        ("hinge", {}, None, "unknown loss 'hinge'"),
        ("asl", {"gama_neg": 4}, None, "no parameter 'gama_neg'"),
        ("bce", {"gamma": 2}, None, "no parameter 'gamma'"),
        ("weighted_asl", {}, None, "needs the class prevalence"),
        ("reweighted", {}, None, "needs the class prevalence"),
        ("weighted_bce", {"weights": "inverse"}, PREVALENCE, "'weights' must be one of chexfusion, ratio"),
        ("weighted_bce", {"weights": "ratio"}, [0.1, 0.0], "none for class index 1"),
        ("focal", {"gamma": "two"}, None, "parameter 'gamma' must be a number"),
        ("focal", {"alpha": 1.5}, None, "alpha must be in"),
        ("asl", {"clip": 1.2}, None, "clip must be in"),
        ("weighted_asl", {}, [0.2, 1.4], "prevalence values must lie in"),
    ],
)
def test_build_loss_errors_name_the_problem(name, params, prevalence, message):
    with pytest.raises(UserError, match=message):
        build_loss(name, params, None if prevalence is None else np.array(prevalence))


def test_build_loss_passes_parameters():
    loss = build_loss("weighted_bce", {"weights": "ratio"}, np.array(PREVALENCE))
    w_pos = [(1 - p) / p for p in PREVALENCE]
    expected = mean_of(lambda x, y, c: -(w_pos[c] * y * math.log(sig(x)) + (1 - y) * math.log(1 - sig(x))))
    assert value(loss) == pytest.approx(expected, rel=1e-6)
    loss = build_loss("asl", {"gamma_neg": 2, "gamma_pos": 0, "clip": 0.1}, None)
    expected = mean_of(lambda x, y, c: asl_entry(x, y, gamma_neg=2, gamma_pos=0, clip=0.1))
    assert value(loss) == pytest.approx(expected, rel=1e-6)


def test_asl_by_name_is_ridnik_and_weighted_asl_keeps_chexfusion_focusing():
    """``asl`` is Ridnik et al.'s setting (gamma_pos 0, gamma_neg 4, clip 0.05); weighted ASL keeps gamma_pos 1."""
    expected = mean_of(lambda x, y, c: asl_entry(x, y, gamma_neg=4, gamma_pos=0, clip=0.05))
    assert value(build_loss("asl", {}, None)) == pytest.approx(expected, rel=1e-6)
    assert loss_parameters("asl")["gamma_pos"] == 0 and loss_parameters("weighted_asl")["gamma_pos"] == 1


@pytest.mark.parametrize("config", ["stage1/config.yaml", "stage2/config.yaml"])
def test_the_demo_configs_loss_is_chexfusions_weighted_asl(config, repo_root):
    """The demo configs compute what they computed before ``asl`` took Ridnik's gamma_pos 0."""
    loss = yaml.safe_load((repo_root / config).read_text())["loss"]
    w_pos = [math.exp(1 - p) for p in PREVALENCE]
    w_neg = [math.exp(p) for p in PREVALENCE]
    expected = mean_of(lambda x, y, c: asl_entry(x, y, w_pos[c], w_neg[c], gamma_neg=4, gamma_pos=1, clip=0.05))
    assert value(build_loss(loss["name"], loss["params"], np.array(PREVALENCE))) == pytest.approx(expected, rel=1e-6)


def test_weighted_bce_by_name_defaults_to_chexfusions_exp_weights():
    w_pos = [math.exp(1 - p) for p in PREVALENCE]
    w_neg = [math.exp(p) for p in PREVALENCE]
    expected = mean_of(lambda x, y, c: -(w_pos[c] * y * math.log(sig(x)) + w_neg[c] * (1 - y) * math.log(1 - sig(x))))
    assert value(build_loss("weighted_bce", {}, np.array(PREVALENCE))) == pytest.approx(expected, rel=1e-6)


def ral_entry(x, y, w_pos=1.0, w_neg=1.0, clip=0.05, lamb=1.5):
    p = sig(x)
    p_m = max(p - clip, 0.0)
    q = 1 - p_m
    positive = math.log(p) + 1.0 * (1 - p) - 2.5 / 2 * (1 - p) ** 2
    negative = p_m**4 * math.log(q) * (lamb - p) * p**2 * (lamb - q)
    return -(w_pos * y * positive + w_neg * (1 - y) * negative)


@pytest.mark.parametrize("scheme", [None, "chexfusion", "ratio"])
def test_class_weighted_ral_scales_each_class_term(scheme):
    """``class_weighted: true``: the authors' RAL with each class's terms times its class weights."""
    weights = {None: chexfusion_class_weights, "chexfusion": chexfusion_class_weights,
               "ratio": ratio_class_weights}[scheme](PREVALENCE)
    expected = mean_of(lambda x, y, c: ral_entry(x, y, weights[0][c], weights[1][c]))
    params = {"class_weighted": True, **({} if scheme is None else {"weights": scheme})}
    assert value(build_loss("ral", params, np.array(PREVALENCE))) == pytest.approx(expected, rel=1e-6)
    assert loss_parameters("ral", params)["weights"] == (scheme or "chexfusion")
    # without the flag: the authors' code, whatever the prevalence
    authors = mean_of(lambda x, y, c: ral_entry(x, y))
    assert value(build_loss("ral", {}, np.array(PREVALENCE))) == pytest.approx(authors, rel=1e-6)


def test_loss_parameters_are_every_default_updated_by_the_config():
    assert loss_parameters("reweighted", {"a": 0.5}) == {"a": 0.5, "g": 4.0, "m": 0.05, "eps": 1e-8,
                                                         "detach_focusing": False}
    assert loss_parameters("weighted_bce", {"weights": "ratio"}) == {"weights": "ratio"}
    ral = loss_parameters("ral")
    assert ral["class_weighted"] is False and ral["weights"] is None
    assert {"lamb", "epsilon_pos", "epsilon_pos_pow", "epsilon_neg", "gamma_neg", "gamma_pos", "clip"} <= set(ral)
    assert loss_parameters("logit_adjusted") == {"tau": 1.0}


@pytest.mark.parametrize("name, params, message", [
    ("ral", {"weights": "ratio"}, "applies to its class-weighted form only"),
    ("ral", {"class_weighted": "yes"}, "'class_weighted' must be true or false"),
    ("asl", {"detach_focusing": 1}, "'detach_focusing' must be true or false"),
    ("weighted_bce", {"gamma": 2}, "no parameter 'gamma'"),
])
def test_loss_parameters_refuse_bad_parameters_by_name(name, params, message):
    with pytest.raises(UserError, match=message):
        loss_parameters(name, params)
