"""Grad-CAM, HiResCAM and Group-CAM maps for the web demo: every finding of one study, sized for a JSON response.

The page draws a coarse grid per image and class (:mod:`chexfusion.serve.heatmap`),
so the maps are averaged down to :data:`GRID` x :data:`GRID` and, like the
attention maps, divided per class by their maximum over the study. Grad-CAM and
HiResCAM cost one backward pass per finding, so every finding gets one; Group-CAM costs
33 forward passes of the study per finding, so only the :data:`GROUPCAM_TOP`
most probable findings get one, the others an all-zero map (the response
lists which have one).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .cam import heat_maps

GRID = 16
GROUPCAM_TOP = 5


def mapped_classes(method: str, probabilities: np.ndarray) -> list[int]:
    """The classes that get a map: all for Grad-CAM and HiResCAM, the most probable few for Group-CAM."""
    order = [int(k) for k in np.argsort(-probabilities, kind="stable")]
    return order[:GROUPCAM_TOP] if method == "groupcam" else sorted(order)


def study_cam_maps(model, method: str, images: torch.Tensor, views: list[str], probabilities: np.ndarray) -> tuple:
    """``[K, N, GRID, GRID]`` maps (max over the study 1 per class, zero where not computed) and the mapped classes."""
    chosen = mapped_classes(method, probabilities)
    out = np.zeros((len(probabilities), len(views), GRID, GRID), dtype=np.float32)
    maps = heat_maps(model, method, images, views, chosen)  # [len(chosen), N, H, W]
    pooled = F.adaptive_avg_pool2d(maps.flatten(0, 1), (GRID, GRID)).unflatten(0, maps.shape[:2]).numpy()
    peak = pooled.max(axis=(1, 2, 3), keepdims=True)
    out[chosen] = np.divide(pooled, peak, out=np.zeros_like(pooled), where=peak > 0)
    return out, chosen
