"""The linear head: global average pooling, dropout, one fully connected layer (``model.head: linear``).

The head of seed 004's EfficientNet / CoAtNet models and of the CXR-LT baselines, kept beside the ML-Decoder so
the two can be compared on the same backbone and loss. It has the decoder's calling convention on tokens
``[B, L, C]`` (padding tokens are left out of the mean), so both stages, inference and the heat-map code take it
unchanged. Its "attention" is what average pooling does: every real token weighs the same, so the attention
maps of a linear-head run are flat and only Grad-CAM / Group-CAM say where it looks. Learned class vectors
only: no text queries.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import UserError


class LinearHead(nn.Module):
    def __init__(self, num_classes: int, in_dim: int, dropout: float = 0.0):
        super().__init__()
        if not 0 <= dropout < 1:
            raise UserError(f"linear head dropout must be in [0, 1), got {dropout}")
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_dim, num_classes)
        self.num_classes = num_classes

    def forward(self, tokens: Tensor, key_padding_mask: Tensor | None = None, queries: Tensor | None = None,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``[B, K]``; with ``return_attention`` also the pooling weights ``[B, K, L]`` (uniform over the
        real tokens). ``key_padding_mask`` ``[B, L]`` is True at padding."""
        if queries is not None:
            raise ValueError("the linear head scores its own classes: it takes no queries")
        tokens = tokens.to(self.classifier.weight.dtype)
        if key_padding_mask is None:
            weights = tokens.new_full(tokens.shape[:2], 1.0 / tokens.shape[1])
        else:
            real = (~key_padding_mask).to(tokens.dtype)
            weights = real / real.sum(dim=1, keepdim=True).clamp_min(1.0)
        pooled = (weights.unsqueeze(-1) * tokens).sum(dim=1)
        logits = self.classifier(self.dropout(pooled))
        if not return_attention:
            return logits
        return logits, weights.unsqueeze(1).expand(-1, self.num_classes, -1)
