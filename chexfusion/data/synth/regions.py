"""Where each finding was drawn on a synthetic image: the ground truth that heat maps are scored against.

A finding's region is the set of pixels whose attenuation changes by more than
:data:`REGION_THRESHOLD` when that finding alone is left out of the scene,
compared after the same positioning as the image (rotation, zoom, shift), but
before exposure, blur and noise. Every finding has its own seeds
(:mod:`.radiograph`), so leaving one out changes nothing else; the region is
therefore what the finding visibly did to *this* image, whatever it is: a blob,
a rim of air, a widened heart (Cardiomegaly changes the anatomy, not a layer),
vessels removed (Pulmonary Embolism). A finding that changed nothing visible
in a view (a frontal-only finding on a lateral image, a very subtle case) has
no region in it.

The file format (``<split>_regions.csv`` beside each split's CSV, one row per
image of that split and finding with a region; docs/synthetic.md):

``dicom_id, class, mask, x_min, y_min, x_max, y_max, area``

``mask`` is a PNG path relative to the dataset root, 8-bit, as large as the
image, 255 inside the region and 0 outside; the box is the region's bounding
box in pixels of the image (``x_max`` / ``y_max`` exclusive) and ``area`` its
pixel count. The masks depend only on the seed and the arguments, as the
images do.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from .radiograph import RadiographSpec, acquisition_rng, attenuation, draw_scene, position

# Attenuation change that makes a pixel part of a finding's region: about four grey levels of the
# 8-bit image at mid-grey, the level of the quantum noise, so the region is what a reader could see.
REGION_THRESHOLD = 0.03
REGIONS_DIR = "regions"
REGION_COLUMNS = ["dicom_id", "class", "mask", "x_min", "y_min", "x_max", "y_max", "area"]


def _positioned(spec: RadiographSpec, scene) -> np.ndarray:
    """Attenuation of ``scene``, moved as the image is (same positioning draws)."""
    return position(attenuation(scene), acquisition_rng(spec), spec.portable)


def finding_regions(spec: RadiographSpec, scene=None) -> dict[str, np.ndarray]:
    """Finding name -> bool mask [size, size] of where it changed the image (findings with an empty region left out).

    ``scene``: the image's own scene (all findings) when the caller has drawn it already.
    """
    if not spec.findings:
        return {}
    full = _positioned(spec, draw_scene(spec) if scene is None else scene)
    regions = {}
    for name in spec.findings:
        without = _positioned(spec, draw_scene(spec, tuple(f for f in spec.findings if f != name)))
        mask = np.abs(full - without) > REGION_THRESHOLD
        if mask.any():
            regions[name] = mask
    return regions


def regions_csv_name(split: str) -> str:
    """The region file of a split's images (``test.csv`` -> ``test_regions.csv``)."""
    return f"{split}_regions.csv"


def class_slug(name: str) -> str:
    """A file-name-safe form of a class name ("Round(ed) Atelectasis" -> "round-ed-atelectasis")."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def mask_path(dicom_id: str, name: str) -> str:
    return f"{REGIONS_DIR}/{dicom_id}/{class_slug(name)}.png"


def png_bytes(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def region_row(dicom_id: str, name: str, mask: np.ndarray) -> list:
    """The regions.csv row of one mask."""
    ys, xs = np.nonzero(mask)
    return [dicom_id, name, mask_path(dicom_id, name), int(xs.min()), int(ys.min()), int(xs.max()) + 1,
            int(ys.max()) + 1, int(mask.sum())]
