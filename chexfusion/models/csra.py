"""CSRA: class-specific residual attention (Zhu & Wu, ICCV 2021), the CXR-LT 2026 winner's head.

Per class ``i`` and map location ``j`` a score ``s_ij = x_j . m_i / ||m_i||`` (a 1x1 convolution whose class
vectors are normalised). The logit adds to the average over locations the attention-pooled score:
``logit_i = mean_j s_ij + lambda * sum_j softmax_j(T s_ij) s_ij``. ``lambda`` weighs the class-specific part (the
winner: 0.1); ``T`` is the softmax temperature (1 as the paper's single-head setting; large T tends to max
pooling). It replaces the ML-Decoder with ``model.head: csra`` and has the decoder's calling convention on the
map's tokens ``[B, L, C]``, so stage-1 training, inference and the heat maps (the softmax over locations) work
unchanged. It has learned class vectors only: no text queries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UserError


class CSRAHead(nn.Module):
    def __init__(self, num_classes: int, in_dim: int, lam: float = 0.1, temperature: float = 1.0):
        super().__init__()
        if lam < 0 or temperature <= 0:
            raise UserError(f"CSRA needs lambda >= 0 and temperature > 0, got {lam} and {temperature}")
        self.classifier = nn.Linear(in_dim, num_classes, bias=False)
        self.lam, self.temperature, self.num_classes = float(lam), float(temperature), num_classes

    def scores(self, tokens: Tensor) -> Tensor:
        """``s`` [B, K, L]: each location's score for each class, with normalised class vectors."""
        weight = self.classifier.weight
        normalised = weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.einsum("blc,kc->bkl", tokens.to(weight.dtype), normalised)

    def forward(self, tokens: Tensor, key_padding_mask: Tensor | None = None, queries: Tensor | None = None,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``[B, K]``; with ``return_attention`` also the class-specific attention ``[B, K, L]``."""
        if queries is not None or key_padding_mask is not None:
            raise UserError("the CSRA head scores its own classes from a whole map (no queries, no padding)")
        score = self.scores(tokens)
        attention = torch.softmax(self.temperature * score, dim=2)
        logits = score.mean(dim=2) + self.lam * (attention * score).sum(dim=2)
        return (logits, attention) if return_attention else logits
