"""Multi-label losses for long-tailed chest X-ray findings.

Every loss is an ``nn.Module`` called as ``loss(logits, targets, mask=None)``:

* ``logits`` ``[B, K]`` raw scores, ``targets`` ``[B, K]`` in ``[0, 1]`` (hard
  labels, or soft pseudo-labels from a noisy-student teacher);
* ``mask`` ``[B, K]`` (or None): a per-entry weight, 0 = ignore. The label
  policy uses it for uncertain / missing labels (and external datasets that
  lack a class). An ignored entry contributes nothing at all: not to the sum,
  not to the normaliser, not to the gradient, even if its target is NaN or -1.

**Reduction** (the same for every loss, so a learning rate transfers between
them): ``sum(mask * l) / sum(mask)``, i.e. the mean of the per-entry losses
``l`` over the valid entries. (The ASL and RAL reference code returns the *sum*
over the batch; multiply the learning rate by ``B*K`` to compare.) A batch
without any valid entry gives a zero loss that still backpropagates.

Notation per entry: ``p = sigmoid(x)``, target ``y``, clipped ("probability
shifted") negative probability ``p_m = max(p - clip, 0)``. Everything is
computed in float32 from ``logsigmoid`` (``log p = logsigmoid(x)``,
``log(1-p) = logsigmoid(-x)``), so extreme logits (±50) and fp16 autocast
regions give finite losses and gradients.

**Focusing weights** ``(1-p)^gamma_pos`` / ``p_m^gamma_neg`` are differentiated
by default (``detach_focusing=False``), as in the focal-loss paper's gradient
analysis and in the CheXFusion and RAL reference code; the ASL reference's
option to treat them as constants is ``detach_focusing=True``.

Class weights always come from the *training* prevalence passed in
(``build_loss(..., prevalence=...)``), never from constants.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError


# ----------------------------------------------------------------- class weights
def _checked_prevalence(prevalence) -> np.ndarray:
    p = np.asarray(prevalence, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise UserError(f"class prevalence must be a non-empty 1-D list, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise UserError("class prevalence values must lie in [0, 1]")
    return p


def chexfusion_class_weights(prevalence) -> tuple[np.ndarray, np.ndarray]:
    """CheXFusion's weights: ``w_pos = exp(1 - p_c)``, ``w_neg = exp(p_c)`` (``p_c`` = training prevalence)."""
    p = _checked_prevalence(prevalence)
    return np.exp(1.0 - p), np.exp(p)


def ratio_class_weights(prevalence) -> tuple[np.ndarray, np.ndarray]:
    """``w_pos = negatives / positives = (1 - p_c) / p_c``, ``w_neg = 1``.

    A class without any training positive cannot be weighted this way and is
    refused by name of its index (drop the class or use chexfusion weights).
    """
    p = _checked_prevalence(prevalence)
    if np.any(p <= 0):
        missing = ", ".join(str(i) for i in np.flatnonzero(p <= 0))
        raise UserError(f"ratio class weights need at least one positive per class; none for class index {missing}")
    return (1.0 - p) / p, np.ones_like(p)


# ----------------------------------------------------------------- base class
class MaskedMultiLabelLoss(nn.Module):
    """Shared input checks, float32 casting and the masked mean. Subclasses define ``elementwise``."""

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        if logits.shape != targets.shape or logits.ndim != 2:
            raise ValueError(f"logits and targets must both be [B, K]; got {tuple(logits.shape)} and "
                             f"{tuple(targets.shape)}")
        logits = logits.float()
        targets = targets.to(device=logits.device, dtype=torch.float32)
        if mask is None:
            return self.elementwise(logits, targets).mean()
        if mask.shape != logits.shape:
            raise ValueError(f"mask must be {tuple(logits.shape)}, got {tuple(mask.shape)}")
        weight = mask.to(device=logits.device, dtype=torch.float32)
        valid = weight > 0
        # Ignored entries get a harmless target so they cannot produce NaN (0 * NaN is NaN).
        per_entry = self.elementwise(logits, torch.where(valid, targets, torch.zeros_like(targets)))
        total = torch.where(valid, weight * per_entry, torch.zeros_like(per_entry)).sum()
        count = torch.where(valid, weight, torch.zeros_like(weight)).sum()
        # With no valid entry both are exactly 0 and the result is a zero that still backpropagates.
        return total / count.clamp_min(torch.finfo(torch.float32).tiny)


def _class_vector(values, name: str) -> Tensor | None:
    if values is None:
        return None
    vector = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if vector.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector with one value per class")
    return vector


class _ClassWeighted(MaskedMultiLabelLoss):
    """Holds optional per-class positive / negative weights as buffers (they follow ``.to(device)``)."""

    def __init__(self, pos_weight=None, neg_weight=None):
        super().__init__()
        self.register_buffer("pos_weight", _class_vector(pos_weight, "pos_weight"), persistent=False)
        self.register_buffer("neg_weight", _class_vector(neg_weight, "neg_weight"), persistent=False)

    def _weights(self, logits: Tensor) -> tuple[Tensor | float, Tensor | float]:
        k = logits.shape[1]
        out = []
        for name in ("pos_weight", "neg_weight"):
            weight = getattr(self, name)
            if weight is None:
                out.append(1.0)
                continue
            if weight.numel() != k:
                raise ValueError(f"{name} has {weight.numel()} classes but the logits have {k}")
            out.append(weight.to(logits.device).float()[None, :])
        return out[0], out[1]


def _log_one_minus_shifted(logits: Tensor, clip: float, eps: float) -> tuple[Tensor, Tensor]:
    """``(p_m, log(1 - p_m))`` with ``p_m = max(sigmoid(x) - clip, 0)``, stable for any logit."""
    if clip > 0:
        one_minus = (torch.sigmoid(-logits) + clip).clamp(max=1.0)  # 1 - p_m, >= clip
        return 1.0 - one_minus, torch.log(one_minus.clamp(min=eps))
    return torch.sigmoid(logits), F.logsigmoid(-logits)


def _focus(base: Tensor, gamma: float, detach: bool) -> Tensor | float:
    if gamma == 0:
        return 1.0
    weight = base.pow(gamma)
    return weight.detach() if detach else weight


# ----------------------------------------------------------------- losses
class BCELoss(MaskedMultiLabelLoss):
    """Binary cross-entropy: ``l = -[y log p + (1-y) log(1-p)]``."""

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


class WeightedBCELoss(_ClassWeighted):
    """Class-weighted BCE: ``l = -[w_pos,c y log p + w_neg,c (1-y) log(1-p)]``."""

    def __init__(self, pos_weight, neg_weight):
        super().__init__(pos_weight, neg_weight)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        w_pos, w_neg = self._weights(logits)
        return -(w_pos * targets * F.logsigmoid(logits) + w_neg * (1 - targets) * F.logsigmoid(-logits))


class FocalLoss(MaskedMultiLabelLoss):
    """Focal loss (Lin et al. 2017), per class as a binary problem:

    ``l = -[a y (1-p)^gamma log p + (1-a) (1-y) p^gamma log(1-p)]`` with ``a = alpha``,
    or ``a = 1 - a = 1`` (no balancing) when ``alpha`` is None.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, detach_focusing: bool = False):
        super().__init__()
        if alpha is not None and not 0 <= alpha <= 1:
            raise UserError(f"focal loss alpha must be in [0, 1], got {alpha}")
        self.gamma, self.alpha, self.detach_focusing = float(gamma), alpha, detach_focusing

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        p = torch.sigmoid(logits)
        a_pos, a_neg = (1.0, 1.0) if self.alpha is None else (self.alpha, 1.0 - self.alpha)
        # 1 - p as sigmoid(-x): exact for large x, where 1 - sigmoid(x) rounds to 0.
        one_minus_p = torch.sigmoid(-logits)
        positive = a_pos * targets * _focus(one_minus_p, self.gamma, self.detach_focusing) * F.logsigmoid(logits)
        negative = a_neg * (1 - targets) * _focus(p, self.gamma, self.detach_focusing) * F.logsigmoid(-logits)
        return -(positive + negative)


class AsymmetricLoss(_ClassWeighted):
    """Asymmetric loss (ASL, Ridnik et al. 2021), optionally class-weighted:

    ``l = -[w_pos,c y (1-p)^gamma_pos log p + w_neg,c (1-y) p_m^gamma_neg log(1-p_m)]``,
    ``p_m = max(p - clip, 0)``. With CheXFusion weights ``w_pos = exp(1-p_c)``,
    ``w_neg = exp(p_c)`` this is the CheXFusion default ("weighted ASL"); without
    weights (or unit weights) it is plain ASL. ``eps`` floors the argument of the
    clipped log as in the reference (only reachable when ``clip`` < ``eps``).
    The constructor's defaults are CheXFusion's; ``build_loss("asl")`` takes
    Ridnik et al.'s gamma_pos 0 (``LOSS_DEFAULTS``).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                 pos_weight=None, neg_weight=None, detach_focusing: bool = False):
        super().__init__(pos_weight, neg_weight)
        if not 0 <= clip < 1:
            raise UserError(f"asymmetric loss clip must be in [0, 1), got {clip}")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps
        self.detach_focusing = detach_focusing

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        w_pos, w_neg = self._weights(logits)
        one_minus_p = torch.sigmoid(-logits)
        p_m, log_one_minus_p_m = _log_one_minus_shifted(logits, self.clip, self.eps)
        positive = targets * _focus(one_minus_p, self.gamma_pos, self.detach_focusing) * F.logsigmoid(logits)
        negative = (1 - targets) * _focus(p_m, self.gamma_neg, self.detach_focusing) * log_one_minus_p_m
        return -(w_pos * positive + w_neg * negative)


@dataclass(frozen=True)
class RobustTerms:
    """RAL's own terms beside ASL's focusing: the Hill regulariser's ``lamb`` and the Taylor coefficients."""

    lamb: float = 1.5
    epsilon_pos: float = 1.0
    epsilon_pos_pow: float = -2.5
    epsilon_neg: float = 0.0


class RobustAsymmetricLoss(_ClassWeighted):
    """Robust asymmetric loss (RAL; Park et al., "Robust Asymmetric Loss for Multi-Label
    Long-Tailed Learning", ICCV-W 2023; CXR-LT 2023 team T4). Per entry, with
    ``q = 1 - p_m = min(1 - p + clip, 1)``:

    ``L+ = (1-p)^gamma_pos [log p + eps_pos (1-p) + eps_pos_pow/2 (1-p)^2]``   (Taylor terms)

    ``L- = p_m^gamma_neg [log q + eps_neg q] (lambda - p) p^2 (lambda - q)``    (Hill-style regulariser)

    ``l = -[w_pos,c y L+ + w_neg,c (1-y) L-]``, exactly as the authors' code
    computes it (note their negative factor multiplies by both ``lambda - p`` and
    ``lambda - q``). Defaults are the paper's: gamma_neg 4, gamma_pos 0, clip
    0.05, lambda 1.5, eps_pos 1.0, eps_pos_pow -2.5, eps_neg 0. With class
    weights (``build_loss("ral", {"class_weighted": True})``) each class's terms
    are scaled as in weighted ASL: the class-weighted form the CXR-LT 2023
    overview describes for T4.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8,
                 terms: RobustTerms = RobustTerms(), pos_weight=None, neg_weight=None, detach_focusing: bool = False):
        super().__init__(pos_weight, neg_weight)
        if not 0 <= clip < 1:
            raise UserError(f"robust asymmetric loss clip must be in [0, 1), got {clip}")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps
        self.lamb, self.epsilon_pos = float(terms.lamb), float(terms.epsilon_pos)
        self.epsilon_pos_pow, self.epsilon_neg = float(terms.epsilon_pos_pow), float(terms.epsilon_neg)
        self.detach_focusing = detach_focusing

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        w_pos, w_neg = self._weights(logits)
        p = torch.sigmoid(logits)
        one_minus_p = torch.sigmoid(-logits)
        p_m, log_q = _log_one_minus_shifted(logits, self.clip, self.eps)
        q = 1.0 - p_m
        taylor = F.logsigmoid(logits) + self.epsilon_pos * one_minus_p + 0.5 * self.epsilon_pos_pow * one_minus_p**2
        hill = (log_q + self.epsilon_neg * q) * (self.lamb - p) * p**2 * (self.lamb - q)
        positive = targets * _focus(one_minus_p, self.gamma_pos, self.detach_focusing) * taylor
        negative = (1 - targets) * _focus(p_m, self.gamma_neg, self.detach_focusing) * hill
        return -(w_pos * positive + w_neg * negative)


class ReweightedLoss(_ClassWeighted):
    """Re-weighted loss of "Enhancing multi-disease diagnosis of chest X-rays" (ChestX-ray14):

    ``L+ = -a w_c (1-p) log p``, ``L- = -p_m^g log(1 - p_m)`` with ``p_m = max(p - m, 0)``,
    ``w_c = negatives / positives`` of class ``c`` in training; ``l = y L+ + (1-y) L-``.
    Defaults a = 0.2, g = 4, m = 0.05.
    """

    def __init__(self, class_weight, a: float = 0.2, g: float = 4.0, m: float = 0.05, eps: float = 1e-8,
                 detach_focusing: bool = False):
        super().__init__(pos_weight=class_weight, neg_weight=None)
        if not 0 <= m < 1:
            raise UserError(f"re-weighted loss margin m must be in [0, 1), got {m}")
        self.a, self.g, self.m, self.eps, self.detach_focusing = float(a), float(g), float(m), eps, detach_focusing

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        w_c, _ = self._weights(logits)
        one_minus_p = torch.sigmoid(-logits)
        p_m, log_one_minus_p_m = _log_one_minus_shifted(logits, self.m, self.eps)
        positive = self.a * w_c * _focus(one_minus_p, 1.0, self.detach_focusing) * F.logsigmoid(logits)
        negative = _focus(p_m, self.g, self.detach_focusing) * log_one_minus_p_m
        return -(targets * positive + (1 - targets) * negative)


# ----------------------------------------------------------------- factory
_WEIGHT_SCHEMES = {"chexfusion": chexfusion_class_weights, "ratio": ratio_class_weights}
_ASL_TERMS = {"gamma_neg": 4.0, "clip": 0.05, "eps": 1e-8, "detach_focusing": False}
# Every parameter of every loss with its default: what a run computes is these updated by ``loss.params``
# (``loss_parameters``), so a study can write each loss's full parameters beside its figures.
LOSS_DEFAULTS = {
    "bce": {},
    "weighted_bce": {"weights": "chexfusion"},  # chexfusion: exp(1 - p_c) / exp(p_c); ratio: negatives / positives
    "focal": {"gamma": 2.0, "alpha": None, "detach_focusing": False},
    "asl": {**_ASL_TERMS, "gamma_pos": 0.0},  # Ridnik et al. 2021's setting
    "weighted_asl": {**_ASL_TERMS, "gamma_pos": 1.0, "weights": "chexfusion"},  # CheXFusion's
    "ral": {**_ASL_TERMS, "gamma_pos": 0.0, **dataclasses.asdict(RobustTerms()), "class_weighted": False,
            "weights": None},
    "reweighted": {"a": 0.2, "g": 4.0, "m": 0.05, "eps": 1e-8, "detach_focusing": False},
}
_FLAGS = ("detach_focusing", "class_weighted")
LOSS_NAMES = tuple(LOSS_DEFAULTS) + ("distribution_balanced", "logit_adjusted")  # the last two: long_tail_losses.py


def _build_long_tail(name: str, entry: tuple, params: dict, prevalence) -> nn.Module:
    return entry[0](_need_prevalence(name, prevalence), **_long_tail_parameters(name, entry, params))


def _long_tail_parameters(name: str, entry: tuple, params: dict) -> dict:
    loss_class, allowed = entry
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise UserError(f"loss '{name}' has no parameter '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    bad = [k for k, v in params.items() if isinstance(v, bool) or not isinstance(v, (int,
                                                                                     float)) or not math.isfinite(v)]
    if bad:
        raise UserError(f"loss '{name}' parameter '{bad[0]}' must be a number, got {params[bad[0]]!r}")
    defaults = {k: v.default for k, v in inspect.signature(loss_class).parameters.items() if k in allowed}
    return {**defaults, **params}


def _need_prevalence(name: str, prevalence) -> np.ndarray:
    if prevalence is None:
        raise UserError(f"loss '{name}' needs the class prevalence of the training labels")
    return _checked_prevalence(prevalence)


def _class_weights(name: str, scheme: str | None, prevalence) -> tuple:
    if scheme is None:
        return None, None
    return _WEIGHT_SCHEMES[scheme](_need_prevalence(name, prevalence))


def _check_value(name: str, key: str, value) -> None:
    if key in _FLAGS:
        if not isinstance(value, bool):
            raise UserError(f"loss '{name}' parameter '{key}' must be true or false, got {value!r}")
    elif key == "weights":
        if value is not None and value not in _WEIGHT_SCHEMES:
            raise UserError(f"loss '{name}' param 'weights' must be one of {', '.join(_WEIGHT_SCHEMES)}, "
                            f"got '{value}'")
    elif value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                    and math.isfinite(value)):
        raise UserError(f"loss '{name}' parameter '{key}' must be a number, got {value!r}")


def loss_parameters(name: str, params: dict | None = None) -> dict:
    """Every parameter the loss ``name`` runs with: its defaults (``LOSS_DEFAULTS``) updated by ``params``.

    Checked before anything trains: an unknown loss, an unknown parameter or a bad value is a ``UserError``.
    RAL is the authors' code unless ``class_weighted`` is true, which multiplies its positive and negative terms
    by the class weights of ``weights`` (default chexfusion), the class-weighted form of the CXR-LT 2023 overview.
    """
    from .long_tail_losses import LOSSES as LONG_TAIL_LOSSES  # built on this module's base class

    params = dict(params or {})
    if name in LONG_TAIL_LOSSES:
        return _long_tail_parameters(name, LONG_TAIL_LOSSES[name], params)
    if name not in LOSS_DEFAULTS:
        raise UserError(f"unknown loss '{name}' (known: {', '.join(LOSS_NAMES)})")
    unknown = sorted(set(params) - set(LOSS_DEFAULTS[name]))
    if unknown:
        allowed = ", ".join(sorted(LOSS_DEFAULTS[name])) or "none"
        raise UserError(f"loss '{name}' has no parameter '{unknown[0]}' (allowed: {allowed})")
    for key, value in params.items():
        _check_value(name, key, value)
    resolved = {**LOSS_DEFAULTS[name], **params}
    if name == "ral" and resolved["class_weighted"]:
        resolved["weights"] = resolved["weights"] or "chexfusion"
    elif name == "ral" and resolved["weights"] is not None:
        raise UserError("loss 'ral' parameter 'weights' applies to its class-weighted form only "
                        "(set class_weighted: true)")
    return resolved


def build_loss(name: str, params: dict | None = None, prevalence: np.ndarray | None = None) -> nn.Module:
    """The loss called ``name`` with keyword ``params`` (``loss_parameters``); class weights from the training
    ``prevalence`` [K].

    Names: bce, weighted_bce (``weights``: chexfusion | ratio), focal, asl (Ridnik et al.: gamma_pos 0),
    weighted_asl (CheXFusion: gamma_pos 1, chexfusion weights), ral (``class_weighted``), reweighted (ratio
    weights), and the long-tail losses of ``long_tail_losses``.
    """
    from .long_tail_losses import LOSSES as LONG_TAIL_LOSSES

    if name in LONG_TAIL_LOSSES:
        return _build_long_tail(name, LONG_TAIL_LOSSES[name], dict(params or {}), prevalence)
    params = loss_parameters(name, params)
    scheme = params.pop("weights", None)
    if name == "bce":
        return BCELoss()
    if name == "weighted_bce":
        return WeightedBCELoss(*_class_weights(name, scheme, prevalence))
    if name == "focal":
        return FocalLoss(**params)
    if name in ("asl", "weighted_asl"):
        pos, neg = _class_weights(name, scheme, prevalence)
        return AsymmetricLoss(**params, pos_weight=pos, neg_weight=neg)
    if name == "ral":
        pos, neg = _class_weights(name, scheme if params.pop("class_weighted") else None, prevalence)
        terms = RobustTerms(**{k: params.pop(k) for k in list(params) if k in RobustTerms.__dataclass_fields__})
        return RobustAsymmetricLoss(**params, terms=terms, pos_weight=pos, neg_weight=neg)
    weight, _ = ratio_class_weights(_need_prevalence(name, prevalence))
    return ReweightedLoss(weight, **params)
