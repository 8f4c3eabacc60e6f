"""The shape of an encoder's map, found by running it once on a blank image (for encoders whose map size cannot
be read from their config, e.g. open_clip towers and torchxrayvision networks)."""

from __future__ import annotations

import torch
from torch import nn


def probe_feature_shape(module: nn.Module, channels: int, image_size: int | tuple[int, int]) -> tuple[int, int, int]:
    """``(C, h, w)`` of ``module``'s output for a ``channels``-channel square (or ``(H, W)``) input, from one forward
    pass in eval mode; the module's training mode is kept."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    was_training = module.training
    try:
        with torch.no_grad():
            return tuple(int(d) for d in module.eval()(torch.zeros(1, channels, *size)).shape[1:])
    finally:
        module.train(was_training)
