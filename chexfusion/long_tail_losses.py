"""Two long-tail losses of the CXR-LT 2026 winner's toolbox: distribution-balanced and logit-adjusted.

Both take the class prior from the *training* prevalence ``p_c`` (as every loss here, never constants) and reduce
like the other losses (:class:`~chexfusion.losses.MaskedMultiLabelLoss`: mean over the valid entries).

**Distribution-balanced** (Wu et al., ECCV 2020, "Distribution-Balanced Loss for Multi-Label Classification in
Long-Tailed Datasets"). Re-balancing weight per (image k, class i): ``r = (1/n_i) / sum_{j: y_j = 1} (1/n_j)``
(the class-level over the instance-level sampling frequency of class-aware re-sampling; the counts ``n`` enter
only as ratios, so the prevalence stands in for them), smoothed to ``r_hat = alpha + sigmoid(beta (r - mu))``.
Negative-tolerant regularisation with the class bias ``nu_i = -kappa * log(p_i / (1 - p_i))``:
``L = r_hat * [ y softplus(-(z - nu)) + (1/lambda) (1 - y) softplus(lambda (z - nu)) ]``. The sign of ``nu`` is
the authors' released code's after their issue 8 (``logits += -log(N / n - 1) * init_bias``): a rare class's logit
is lowered, so its many negatives are penalised less -- the "negative-tolerant" part.
Defaults as the authors' code for COCO-MLT: alpha 0.1, beta 10, mu 0.2, kappa 0.05, lambda 2. An image with no
positive label gets ``r_hat = alpha + 1`` (its instance frequency is zero).

**Logit-adjusted** (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment"), in its binary form per
class: the two logits ``(z, 0)`` are offset by ``tau log p`` and ``tau log(1 - p)``, which is one logit shifted by
the prior log-odds: ``L = BCE(z + tau log(p / (1 - p)), y)``. At inference the raw ``z`` is used, so rare classes
are not pushed down by their prior. Default tau 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError
from .losses import MaskedMultiLabelLoss

PREVALENCE_FLOOR = 1e-6  # a class without training positives still has a finite log-odds


def prior_log_odds(prevalence) -> Tensor:
    """``log(p / (1 - p))`` per class, with p kept inside (0, 1)."""
    p = np.clip(np.asarray(prevalence, dtype=np.float64), PREVALENCE_FLOOR, 1.0 - PREVALENCE_FLOOR)
    return torch.as_tensor(np.log(p / (1.0 - p)), dtype=torch.float32)


class DistributionBalancedLoss(MaskedMultiLabelLoss):
    """Re-balanced weighting x negative-tolerant regularisation (module docstring)."""

    def __init__(self, prevalence, alpha: float = 0.1, beta: float = 10.0, mu: float = 0.2, kappa: float = 0.05,
                 lam: float = 2.0):
        super().__init__()
        if lam <= 0:
            raise UserError(f"distribution-balanced loss 'lam' must be positive, got {lam}")
        p = np.clip(np.asarray(prevalence, dtype=np.float64), PREVALENCE_FLOOR, 1.0)
        self.register_buffer("inverse_frequency", torch.as_tensor(1.0 / p, dtype=torch.float32), persistent=False)
        self.register_buffer("bias", -kappa * prior_log_odds(prevalence), persistent=False)  # nu
        self.alpha, self.beta, self.mu, self.lam = float(alpha), float(beta), float(mu), float(lam)

    def rebalancing_weight(self, targets: Tensor) -> Tensor:
        """``r_hat`` [B, K] from each image's positive labels."""
        inverse = self.inverse_frequency.to(targets.device)
        instance = (targets * inverse).sum(dim=1, keepdim=True)  # sum over the image's positives of 1/n_j
        ratio = torch.where(instance > 0, inverse / instance.clamp_min(1e-12), torch.full_like(instance, float("inf")))
        return self.alpha + torch.sigmoid(self.beta * (ratio - self.mu))

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        shifted = logits - self.bias.to(logits.device)
        positive = targets * F.softplus(-shifted)
        negative = (1 - targets) * F.softplus(self.lam * shifted) / self.lam
        return self.rebalancing_weight(targets) * (positive + negative)


class LogitAdjustedLoss(MaskedMultiLabelLoss):
    """BCE on logits shifted by ``tau`` x the class's prior log-odds (module docstring)."""

    def __init__(self, prevalence, tau: float = 1.0):
        super().__init__()
        self.register_buffer("offset", float(tau) * prior_log_odds(prevalence), persistent=False)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits + self.offset.to(logits.device), targets, reduction="none")


LOSSES = {"distribution_balanced": (DistributionBalancedLoss, {"alpha", "beta", "mu", "kappa", "lam"}),
          "logit_adjusted": (LogitAdjustedLoss, {"tau"})}
