"""What a caller may hand a predictor as a study's images, turned into the model's input.

Paths (JPEG, PNG, DICOM; the format is sniffed), PIL images, numpy arrays
(``[H, W]`` grayscale: uint8, uint16 or float in [0, 1]) and already
normalized tensors ``[C, H, W]`` are accepted. Files and PIL images go through
the same reader as ``chexfusion predict``, so an image scores the same whether
it came from a CSV, a notebook or the web demo.

Views may be omitted: a DICOM file's ``ViewPosition`` (or view code meaning)
gives it, as in the web demo; anything else is ``unknown``, which the run
routes as it was trained to.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..data.images import Preprocess
from ..data.views import UNKNOWN, VIEWS, dicom_file_view
from ..errors import UserError


def study_inputs(images, views, preprocess: Preprocess) -> tuple[torch.Tensor, list[str]]:
    """``[n, C, H, W]`` normalized inputs and one view per image (given, from DICOM headers, or unknown)."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not images:
        raise UserError("a study needs at least one image")
    if views is not None:
        views = [views] if isinstance(views, str) else list(views)
        if len(views) != len(images):
            raise UserError(f"got {len(views)} views for {len(images)} images: give one per image, or none")
        bad = [v for v in views if v not in VIEWS]
        if bad:
            raise UserError(f"view '{bad[0]}' is not one of {', '.join(VIEWS)}")
    else:
        views = [_file_view(im) for im in images]
    return torch.stack([model_input(im, preprocess) for im in images]), views


def model_input(image, preprocess: Preprocess) -> torch.Tensor:
    """One image of any accepted kind as a normalized ``[C, H, W]`` float tensor."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return preprocess.read(image)
    if isinstance(image, torch.Tensor):
        expected = (preprocess.channels, preprocess.image_size, preprocess.image_size)
        if tuple(image.shape) != expected:
            raise UserError(f"a tensor image must be normalized model input of shape {list(expected)}, "
                            f"got {list(image.shape)}")
        return image.float()
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if isinstance(image, Image.Image):
        return preprocess.from_pil(image)
    raise UserError(f"cannot read an image from a {type(image).__name__}: give a path, a PIL image, a numpy "
                    "array or a tensor")


def _array_to_pil(array: np.ndarray):
    from PIL import Image

    if array.ndim != 2:
        raise UserError(f"a numpy image must be grayscale [H, W], got shape {list(array.shape)}")
    if array.dtype == np.uint8:
        return Image.fromarray(array, mode="L")
    if array.dtype == np.uint16:
        return Image.fromarray(array.astype(np.int32), mode="I")  # read as 16-bit, as a 16-bit PNG is
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise UserError("a float numpy image must hold values in [0, 1]")
        return Image.fromarray(array.astype(np.float32), mode="F")
    raise UserError(f"numpy images must be uint8, uint16 or float in [0, 1], got {array.dtype}")


def _file_view(image) -> str:
    if isinstance(image, (str, os.PathLike)) and Path(image).is_file():
        return dicom_file_view(image) or UNKNOWN
    return UNKNOWN
