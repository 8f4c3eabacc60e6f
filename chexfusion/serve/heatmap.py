"""Heat maps from the ML-Decoder's cross-attention: where each finding's query looked, per image.

The decoder's queries attend over the tokens of every image of the study (stage
2) or of one image (stage 1); the attention, averaged over heads and layers, is
a weight per token that sums to one per query. Put on each image's feature map
grid (a stage-2 token where it looked: ``models.fusion.tokens_on_feature_grid``)
it is a coarse map at the backbone's stride that tiles the image, which the page
upsamples bilinearly over the image.

With learned group decoding, ``classes_per_group`` classes share one query and
so one map: class ``k`` reads query ``k // classes_per_group``. The page says so.
"""

from __future__ import annotations

import numpy as np
import torch

from ..inference.predictor import query_of_class  # noqa: F401  (where the demo and explain read it)


def class_heatmaps(query_maps: torch.Tensor, query_index: np.ndarray) -> np.ndarray:
    """``[Q, N, h, w]`` attention per query and image -> ``[K, N, h, w]`` per class, max over the study = 1.

    Scaling per class over all images of the study keeps the comparison between
    images (which view the finding's query looked at) and makes each class's map
    use the whole colour scale; a map that is all zero stays zero.
    """
    maps = query_maps.detach().float().cpu().numpy()[query_index]
    peak = maps.max(axis=(1, 2, 3), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def as_grid(values: np.ndarray, decimals: int = 4) -> list[list[float]]:
    """One ``[h, w]`` map as JSON rows, rounded (the page needs no more precision than its colour scale)."""
    return np.round(values.astype(np.float64), decimals).tolist()
