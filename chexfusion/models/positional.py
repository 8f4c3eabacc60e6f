"""Fixed 2-D sinusoidal position encoding for the tokens of a feature map.

Stage 2 concatenates the tokens of several images of a study. Each token must
still know *where* in its image it lies (a left-lower-lobe opacity is not a
right-upper one), but the encoding must not depend on anything learned for a
particular map size, so a fixed sine/cosine code is used (as CheXFusion does).
It is the same for every image, so it carries no information about an image's
position in the study: that is what keeps stage 2 invariant to image order.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def _axis_code(positions: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    """``[n, dim]``: sin of ``dim/2`` frequencies, then cos of the same frequencies."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float64) / half
    inverse_frequency = temperature ** -exponent
    angles = positions.to(torch.float64)[:, None] * inverse_frequency[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``[h*w, dim]`` float32 code for a ``h x w`` map, rows in ``flatten`` order (index = y*w + x).

    The first half of the channels encodes the row, the second half the column,
    each as sines then cosines of geometrically spaced frequencies; hence
    ``dim`` must be divisible by 4.
    """
    if h < 1 or w < 1:
        raise ValueError(f"sincos_2d needs a non-empty map, got {h}x{w}")
    if dim % 4 != 0:
        raise UserError(f"2-D sin-cos position encoding needs a width divisible by 4, got {dim}")
    rows = torch.arange(h).repeat_interleave(w)  # y of every token
    cols = torch.arange(w).repeat(h)  # x of every token
    code = torch.cat([_axis_code(rows, dim // 2, temperature), _axis_code(cols, dim // 2, temperature)], dim=1)
    return code.to(torch.float32)
