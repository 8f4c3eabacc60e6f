"""The stage-2 model: a Transformer over the tokens of all images of a study (CheXFusion's fusion, done right).

Per image, the cached stage-1 map ``[C, h, w]`` is projected to ``dim`` channels
(CheXFusion: 3x3 stride-2 convolution), flattened to ``h'*w'`` tokens, and given
a fixed 2-D sin-cos position code plus a learned embedding of its *view*
(frontal / lateral / unknown). The tokens of all ``N`` images are concatenated
to ``[B, N*h'*w', dim]``, mixed by a Transformer encoder, and read by an
ML-Decoder head over the same tokens.

What the public implementation gets wrong and this one guarantees:

* **Layout**: the encoder is built ``batch_first=True`` and fed ``[B, L, dim]``,
  so attention runs over the tokens of one study, never across the studies of a
  batch.
* **Padding**: studies have 1 to ``max_images`` images (no 4-view limit), padded
  to the batch's largest. ``image_mask`` says which slots are real; padding
  slots are zeroed before use, masked as keys in every encoder layer and in the
  decoder (``src_key_padding_mask`` / ``key_padding_mask``), so whatever a
  padding slot holds, and however many there are, changes nothing.
* **Order**: with ``position_embedding=False`` (default) nothing depends on an
  image's slot, so a study's logits are invariant to reordering its images (up
  to float summation order). ``position_embedding=True`` adds a learned
  embedding of the slot index (as the public code's per-slot "segment"
  embedding does); that is deterministic because the data pipeline orders
  images canonically, but no longer permutation-invariant.

The encoder uses ``enable_nested_tensor=False``: the nested-tensor fast path
changes numerics and what padded positions hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.views import VIEWS
from ..errors import UserError
from .ml_decoder import build_decoder
from .positional import sincos_2d

PROJECTIONS = ("conv3x3s2", "conv1x1", "linear")


def _projection(kind: str, in_channels: int, dim: int) -> nn.Module:
    if kind == "conv3x3s2":
        return nn.Conv2d(in_channels, dim, kernel_size=3, stride=2, padding=1)
    if kind == "conv1x1":
        return nn.Conv2d(in_channels, dim, kernel_size=1)
    if kind == "linear":  # per-position linear map on channels-last tokens
        return nn.Linear(in_channels, dim)
    raise UserError(f"unknown stage-2 projection '{kind}' (known: {', '.join(PROJECTIONS)})")


def _projected_hw(kind: str, feature_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = feature_hw
    if kind == "conv3x3s2":
        return (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w


def tokens_on_feature_grid(maps: Tensor, kind: str, feature_hw: tuple[int, int]) -> Tensor:
    """Per-token values ``[..., h', w']`` -> ``[..., h, w]`` on the image's feature map, each token where it looks.

    A ``conv3x3s2`` token ``(i, j)`` (stride 2, padding 1) is centred on feature cell ``(2i, 2j)``, not on the
    middle of a ``2 x 2`` block: drawn as if the ``h' x w'`` tokens tiled the image, a map sits half a feature
    cell right of and below what the tokens saw. Here the tokens are placed on their cells and interpolated
    bilinearly in between (held at the last token past it), so the result tiles the image as the backbone map
    does and any even upsampling of it is in place. The other projections keep the grid (returned as is).
    """
    if kind != "conv3x3s2":
        return maps
    (th, tw), (h, w) = maps.shape[-2:], feature_hw
    flat = maps.reshape(-1, 1, th, tw)
    spread = nn.functional.interpolate(flat, size=(2 * th - 1, 2 * tw - 1), mode="bilinear", align_corners=True)
    held = nn.functional.pad(spread, (0, w - spread.shape[-1], 0, h - spread.shape[-2]), mode="replicate")
    return held.reshape(*maps.shape[:-2], h, w)


@dataclass(frozen=True)
class FusionEncoder:
    """The shape of the Transformer over a study's tokens (stage 2's ``model`` section).

    ``projection`` maps each image's feature map to ``dim`` channels; ``num_layers=0`` drops the encoder (the
    decoder reads the projected tokens straight: an ablation); ``position_embedding`` adds a learned embedding of
    an image's slot; ``num_views`` is the size of the view embedding table.
    """

    dim: int = 768
    projection: str = "conv3x3s2"
    num_layers: int = 2
    num_heads: int = 8
    ff_dim: int = 2048
    dropout: float = 0.1
    norm_first: bool = False
    max_images: int = 16
    position_embedding: bool = False
    num_views: int = len(VIEWS)

    def check(self) -> None:
        if self.dim % self.num_heads:
            raise UserError(f"stage-2 width dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.dim % 4:
            raise UserError(f"stage-2 width dim={self.dim} must be divisible by 4 (2-D sin-cos position code)")
        if self.num_layers < 0 or self.max_images < 1 or self.num_views < 1:
            raise UserError(f"stage-2 needs num_layers >= 0, max_images >= 1 and num_views >= 1 "
                            f"(got {self.num_layers}, {self.max_images}, {self.num_views})")


class StudyFusion(nn.Module):
    """Multi-view Transformer fusion over cached per-image feature maps, with an ML-Decoder head."""

    def __init__(self, num_classes: int, in_channels: int, feature_hw: tuple[int, int],
                 encoder: FusionEncoder = FusionEncoder(), decoder_kwargs: dict | None = None,
                 query_dim: int | None = None, head: nn.Module | None = None):
        """``decoder_kwargs`` go to :class:`MLDecoder`; its width defaults to ``encoder.dim``. ``head``: another
        head with the decoder's calling convention on the study's tokens (:class:`~.linear_head.LinearHead`)."""
        super().__init__()
        encoder.check()
        dim = encoder.dim
        self.in_channels = in_channels
        self.feature_hw = (int(feature_hw[0]), int(feature_hw[1]))
        self.projection_kind = encoder.projection
        self.projection = _projection(encoder.projection, in_channels, dim)
        self.token_grid = _projected_hw(encoder.projection, self.feature_hw)
        self.register_buffer("position_code", sincos_2d(*self.token_grid, dim), persistent=False)
        self.num_views = encoder.num_views
        self.max_images = encoder.max_images
        self.view_embedding = nn.Embedding(encoder.num_views, dim)
        self.index_embedding = nn.Embedding(encoder.max_images, dim) if encoder.position_embedding else None
        if encoder.num_layers:
            layer = nn.TransformerEncoderLayer(dim, encoder.num_heads, encoder.ff_dim, encoder.dropout,
                                               batch_first=True, norm_first=encoder.norm_first)
            final_norm = nn.LayerNorm(dim) if encoder.norm_first else None
            self.encoder = nn.TransformerEncoder(layer, encoder.num_layers, norm=final_norm,
                                                 enable_nested_tensor=False)
        else:
            self.encoder = None
        decoder_options = {"dim": dim, **(decoder_kwargs or {})}
        self.decoder = head if head is not None else build_decoder(num_classes, dim, decoder_options, query_dim)

    def no_weight_decay(self) -> set[str]:
        """Embedding tables are exempt from weight decay (timm's convention; ``training.optim.param_groups``)."""
        return {"view_embedding.weight"} | ({"index_embedding.weight"} if self.index_embedding is not None else set())

    def num_tokens_per_image(self) -> int:
        return self.token_grid[0] * self.token_grid[1]

    def _check_inputs(self, features: Tensor, views: Tensor, image_mask: Tensor) -> None:
        if features.ndim != 5:
            raise ValueError(f"features must be [B, N, C, h, w], got {tuple(features.shape)}")
        b, n, c, h, w = features.shape
        if c != self.in_channels or (h, w) != self.feature_hw:
            raise UserError(
                f"stage-2 model expects feature maps of {self.in_channels}x{self.feature_hw[0]}x{self.feature_hw[1]}, "
                f"got {c}x{h}x{w}: the feature store does not match this model"
            )
        if views.shape != (b, n) or image_mask.shape != (b, n):
            raise ValueError(f"views and image_mask must be [{b}, {n}], got {tuple(views.shape)} and "
                             f"{tuple(image_mask.shape)}")
        if image_mask.dtype != torch.bool:
            raise ValueError(f"image_mask must be bool (True = real image), got {image_mask.dtype}")
        if n > self.max_images:
            raise ValueError(f"{n} image slots exceed max_images={self.max_images}; cap studies in the data pipeline")
        if not bool(image_mask.any(dim=1).all()):
            raise ValueError("every study needs at least one real image")
        real_views = views[image_mask]
        if bool(((real_views < 0) | (real_views >= self.num_views)).any()):
            raise ValueError(f"view indices must lie in [0, {self.num_views})")

    def _tokens_per_image(self, maps: Tensor) -> Tensor:
        """``[M, C, h, w]`` -> ``[M, h'*w', dim]``."""
        if self.projection_kind == "linear":
            return self.projection(maps.flatten(2).transpose(1, 2))
        return self.projection(maps).flatten(2).transpose(1, 2)

    def forward(
        self,
        features: Tensor,
        views: Tensor,
        image_mask: Tensor,
        queries: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Study logits ``[B, K]``; with ``return_attention`` also the decoder attention ``[B, K or G, N*h'*w']``.

        ``features`` ``[B, N, C, h, w]`` (any float dtype, cast to the model's),
        ``views`` ``[B, N]`` indices into ``VIEWS``, ``image_mask`` ``[B, N]`` bool
        (True = real image). Padding slots may hold anything, views included.
        """
        self._check_inputs(features, views, image_mask)
        b, n = image_mask.shape
        dtype = self.view_embedding.weight.dtype
        is_padding = ~image_mask
        features = features.to(dtype).masked_fill(is_padding[:, :, None, None, None], 0)
        views = views.long().masked_fill(is_padding, 0)

        tokens = self._tokens_per_image(features.flatten(0, 1)) + self.position_code.to(dtype)  # [B*N, T, dim]
        per_image = self.view_embedding(views)  # [B, N, dim]
        if self.index_embedding is not None:
            per_image = per_image + self.index_embedding(torch.arange(n, device=per_image.device))
        per_token = self.num_tokens_per_image()
        tokens = (tokens.unflatten(0, (b, n)) + per_image[:, :, None, :]).flatten(1, 2)  # [B, N*T, dim]

        token_padding = is_padding.repeat_interleave(per_token, dim=1)  # [B, N*T], True = ignore
        if self.encoder is not None:
            tokens = self.encoder(tokens, src_key_padding_mask=token_padding)
        return self.decoder(tokens, key_padding_mask=token_padding, queries=queries, return_attention=return_attention)

    def attention_maps(self, attention: Tensor) -> Tensor:
        """Decoder attention ``[B, Q, N*h'*w']`` -> ``[B, Q, N, h, w]``, one heat map per image on its feature
        map's grid (:func:`tokens_on_feature_grid`: where each token looked), so it can be upsampled evenly."""
        b, q, length = attention.shape
        tokens = attention.reshape(b, q, length // self.num_tokens_per_image(), *self.token_grid)
        return tokens_on_feature_grid(tokens, self.projection_kind, self.feature_hw)
