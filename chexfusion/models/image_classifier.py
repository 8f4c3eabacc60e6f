"""The stage-1 model: a timm backbone's spatial map read by an ML-Decoder head.

Each image is classified on its own (stage 1 of CheXFusion). The backbone is
later frozen and its maps cached for stage 2, so the map is exposed separately
(``forward_features``) and the head can be run on a cached map
(``classify_map``), e.g. for the stage-1 "max over a study's images" baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..errors import UserError
from .ml_decoder import build_decoder
from .positional import sincos_2d

if TYPE_CHECKING:  # the backbone module imports timm; the head alone does not need it
    from .backbone import Backbone


class ImageClassifier(nn.Module):
    """Backbone map ``[B, C, h, w]`` -> tokens ``[B, h*w, C]`` -> ML-Decoder logits ``[B, K]``."""

    def __init__(self, backbone: Backbone, num_classes: int, decoder_kwargs: dict | None = None,
                 query_dim: int | None = None, position_encoding: bool = False, head: nn.Module | None = None):
        """``position_encoding`` adds the fixed 2-D sin-cos code to the tokens before the decoder (the public
        CheXFusion stage-1 code does; the ML-Decoder paper does not, hence off by default). ``head``: another head
        with the decoder's calling convention (:class:`~chexfusion.models.csra.CSRAHead`) instead of an ML-Decoder."""
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.position_encoding = position_encoding
        if position_encoding and backbone.num_features % 4:
            raise UserError(f"position_encoding needs backbone channels divisible by 4, "
                            f"'{backbone.name}' has {backbone.num_features}")
        self.decoder = head if head is not None else build_decoder(num_classes, backbone.num_features,
                                                                   decoder_kwargs, query_dim)

    def forward_features(self, images: Tensor) -> Tensor:
        """The backbone's map ``[B, C, h, w]``."""
        return self.backbone(images)

    def _tokens(self, feature_map: Tensor) -> Tensor:
        tokens = feature_map.flatten(2).transpose(1, 2)  # [B, h*w, C], row-major over the map
        if self.position_encoding:
            h, w = feature_map.shape[-2:]
            tokens = tokens + sincos_2d(h, w, tokens.shape[-1]).to(tokens)
        return tokens

    def classify_map(self, feature_map: Tensor, queries: Tensor | None = None,
                     return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The head alone on a (possibly cached) map ``[B, C, h, w]``; cast to the head's dtype."""
        feature_map = feature_map.to(next(self.decoder.parameters()).dtype)
        return self.decoder(self._tokens(feature_map), queries=queries, return_attention=return_attention)

    def forward(self, images: Tensor, queries: Tensor | None = None) -> Tensor:
        """Logits ``[B, K]`` (``K`` = rows of ``queries`` when the head scores a query matrix)."""
        return self.decoder(self._tokens(self.forward_features(images)), queries=queries)

    def forward_with_attention(self, images: Tensor, queries: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(logits ``[B, K]``, attention ``[B, K or G, h*w]``); reshape to ``[.., h, w]`` for a heat map."""
        return self.decoder(self._tokens(self.forward_features(images)), queries=queries, return_attention=True)
