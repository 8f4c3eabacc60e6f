"""The feature store's contract with every reader of images: which backbone an image goes through, what is kept
of its map, and in which order a table's images are stored.

Feature extraction and inference from raw images (``chexfusion predict``, the
web demo, the Python API) both call these, so a map computed from a raw image
is the same numbers as the one cached in the store. Importing this module does
not import torch (the store's metadata side works without it); computing maps
does.
"""

from __future__ import annotations

import numpy as np

from ..data.studies import group_studies
from ..errors import UserError


def route_view(view: str, routing: str, unknown_view: str) -> str:
    """The backbone slot an image goes through: the shared one, or the one of its view (unknown as configured)."""
    if routing == "shared":
        return "shared"
    return unknown_view if view == "unknown" else view


def study_ordered_rows(frame) -> np.ndarray:
    """All rows, each study's images together in canonical order, studies in order of first appearance."""
    groups = group_studies(frame)
    return np.concatenate(list(groups.values())).astype(np.int64) if groups else np.zeros(0, np.int64)


def cached_features(feature_map, pool, dtype: str):
    """What the feature store keeps of a backbone map: optionally pooled, rounded to the store dtype."""
    import torch
    import torch.nn.functional as F

    if pool:
        feature_map = F.adaptive_avg_pool2d(feature_map, tuple(pool))
    return feature_map.to(getattr(torch, dtype))


class RoutedBackbones:
    """Frozen backbones by routing slot, mapping a batch of images to store-equivalent maps.

    ``backbones``: slot (``shared``, or ``frontal`` / ``lateral``) -> a module whose call gives a ``[B, C, h, w]``
    map. ``shape``: when given, the ``[C, h, w]`` every map must have (a mismatch means an inconsistent run).
    """

    def __init__(self, backbones: dict, routing: str, unknown_view: str, pool, dtype: str, device,
                 shape: tuple[int, ...] | None = None):
        import torch

        self.device = torch.device(device)
        self.backbones = {slot: m.eval().requires_grad_(False).to(self.device) for slot, m in backbones.items()}
        self.routing, self.unknown_view, self.pool, self.dtype = routing, unknown_view, pool, dtype
        self.shape = tuple(shape) if shape is not None else None

    def maps(self, images, views: list[str]):
        """``[B, C, h, w]`` maps in the store dtype on ``self.device``, in the order of ``images``."""
        import torch

        with torch.inference_mode():
            images = images.to(self.device)
            slots = np.array([route_view(v, self.routing, self.unknown_view) for v in views])
            out = None
            for slot in sorted(set(slots.tolist())):
                idx = torch.from_numpy(np.flatnonzero(slots == slot)).to(self.device)
                feats = cached_features(self.backbones[slot](images[idx]), self.pool, self.dtype)
                if self.shape is not None and tuple(feats.shape[1:]) != self.shape:
                    raise UserError(f"backbone {slot} produces maps of shape {list(feats.shape[1:])}, but its "
                                    f"run.json and features.pool say {list(self.shape)}: the run folder is "
                                    "inconsistent")
                if out is None:
                    out = torch.empty((len(views), *feats.shape[1:]), dtype=feats.dtype, device=self.device)
                out[idx] = feats
            return out
