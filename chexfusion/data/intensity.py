"""How a radiograph stored with more than 8 bits becomes [0, 1] grey levels (``data.intensity``).

PadChest's PNGs are 16-bit files holding 12 or 10 stored bits, each exposure with its own range: divided by the
type's maximum (65535, ``full_range``, the default and what 8-bit JPEG pipelines do implicitly) a 12-bit image
uses only the darkest 1/16 of the scale and every image a different part of it. ``minmax`` stretches each image
to its own minimum and maximum; ``percentile`` (the CXR-LT 2026 winner's choice) first clips to the 0.5th and
99.5th percentiles, so a few burnt-out or black border pixels do not set the scale. 8-bit files and DICOM (whose
own window is applied when read) are not affected. The choice is part of :class:`~chexfusion.data.images.Preprocess`,
recorded in the run and the feature store, so predict and serve map an image as training did.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

INTENSITY_MODES = ("full_range", "minmax", "percentile")
DEFAULT_INTENSITY = "full_range"
PERCENTILES = (0.5, 99.5)
PERCENTILE_SAMPLE = 1 << 16  # pixels the percentiles are taken over (a fixed stride through the image)


def check_intensity(mode: str) -> None:
    if mode not in INTENSITY_MODES:
        raise UserError(f"intensity must be one of {', '.join(INTENSITY_MODES)}, got '{mode}'")


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:  # a flat image: black rather than a division by zero
        return np.zeros(values.shape, dtype=np.float32)
    scaled = (np.clip(values, low, high) - np.float32(low)) / np.float32(high - low)
    return scaled.astype(np.float32)


def map_intensity(values: np.ndarray, mode: str, type_max: float) -> np.ndarray:
    """Stored values (any integer array) -> float32 in [0, 1] under ``mode``; ``type_max`` is the type's maximum."""
    check_intensity(mode)
    values = np.asarray(values, dtype=np.float32)
    if mode == "full_range":
        return np.clip(values / np.float32(type_max), 0.0, 1.0)
    if mode == "minmax":
        return _stretch(values, float(values.min()), float(values.max()))
    flat = values.ravel()
    sample = flat[::max(1, flat.size // PERCENTILE_SAMPLE)]
    low, high = np.percentile(sample, PERCENTILES)
    return _stretch(values, float(low), float(high))
