"""Test-time augmentation: a list of views of each image whose probabilities are averaged with the original's.

A view is ``flip`` (or ``hflip``: the horizontal mirror), ``scale:S`` (zoom by S about the centre, 0.5-1.5;
S < 1 shows a margin filled with the image's darkest value, as the training augmentation does) or ``shift:F``
(move the image by F of its size right and down, |F| < 0.5; negative: left and up). The probability of an
image is the mean over the original and every listed view, so ``flip`` alone gives exactly the old
``--tta`` (the mean of the image and its mirror). Each image is transformed alone: its prediction does not
depend on the batch it came in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torchvision.transforms.v2.functional as TF

from ..errors import UserError

FLIP_NAMES = ("flip", "hflip")


@dataclass(frozen=True)
class TtaView:
    """One test-time view: a horizontal flip, or an affine zoom / shift."""

    name: str  # as written: flip, scale:0.9, shift:0.05
    flip: bool = False
    scale: float = 1.0
    shift: float = 0.0

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The view of a batch ``[B, C, H, W]`` (each image on its own)."""
        if self.flip:
            return torch.flip(images, dims=[-1])
        pixels = [int(round(self.shift * images.shape[-1])), int(round(self.shift * images.shape[-2]))]
        return torch.stack([TF.affine(image, angle=0.0, translate=pixels, scale=self.scale, shear=[0.0, 0.0],
                                      interpolation=TF.InterpolationMode.BILINEAR, fill=float(image.min()))
                            for image in images])


def _parse_view(text: str, key: str) -> TtaView:
    name, _, amount = text.strip().partition(":")
    if name in FLIP_NAMES and not amount:
        return TtaView(text.strip(), flip=True)
    if name in ("scale", "shift") and amount:
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        if name == "scale" and 0.5 <= value <= 1.5:
            return TtaView(text.strip(), scale=value)
        if name == "shift" and abs(value) < 0.5:
            return TtaView(text.strip(), shift=value)
    raise UserError(f"{key}: unknown test-time view '{text.strip()}' (flip, scale:S with S in [0.5, 1.5], "
                    "shift:F with |F| < 0.5)")


def parse_tta(spec: bool | str | Iterable | None, key: str = "--tta") -> tuple[TtaView, ...]:
    """Views from a comma list (``flip,scale:0.9``), a list of names (or of views), or a bool (True: ``flip``,
    the old meaning of ``--tta``); a view named twice is kept once."""
    if spec is None or spec is False:
        return ()
    if spec is True:
        spec = ["flip"]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    views: dict[TtaView, None] = {}
    for item in items:
        if not isinstance(item, TtaView) and not str(item).strip():
            continue
        view = item if isinstance(item, TtaView) else _parse_view(str(item), key)
        views.setdefault(TtaView("flip", flip=True) if view.flip else view, None)
    return tuple(views)


def tta_mean(score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
             views: tuple[TtaView, ...]) -> torch.Tensor:
    """The mean of ``score`` over the images and each of their views."""
    total = score(images)
    for view in views:
        total = total + score(view.apply(images))
    return total / (1 + len(views))
