"""The images of a CSV in the units a model scores, read for the heat-map commands.

A stage-2 run scores a study from its first ``max_images`` images in the
canonical order (frontal first), exactly as ``chexfusion predict`` does; the
images past that get no map and are counted. A stage-1 run scores each image
alone; a study's images are still read together (one batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.cxr_lt import read_cxr_lt
from ..data.external import read_external
from ..data.images import read_image, to_tensor
from ..data.studies import group_studies

CSV_FORMATS = ("cxr-lt", "vindr")


@dataclass
class Unit:
    rows: list[int]  # table rows, canonical order
    images: torch.Tensor  # [N, C, S, S] model input
    gray: np.ndarray  # [N, S, S] in [0, 1], for overlays
    views: list[str]


def read_table(path, fmt: str = "cxr-lt"):
    """The image list: a CXR-LT CSV, or a VinDr-CXR annotation CSV (one row per image, ``<image_id>.dicom``)."""
    if fmt == "vindr":
        return read_external("vindr", path)
    return read_cxr_lt(path, classes=[])


def planned_units(table, max_images: int | None, wanted: set | None = None) -> tuple[list[list[int]], int]:
    """Rows per unit (studies with at least one ``wanted`` row), and how many wanted rows fall past ``max_images``."""
    units, dropped = [], 0
    for rows in group_studies(table.frame).values():
        rows = [int(r) for r in rows]
        scored = rows[:max_images] if max_images else rows
        if wanted is not None:
            dropped += sum(r in wanted for r in rows[len(scored):])
            if not any(r in wanted for r in scored):
                continue
        units.append(scored)
    return units, dropped


def read_unit(table, paths: list[str], rows: list[int], preprocess) -> Unit:
    grays = [read_image(paths[r], preprocess.image_size, resize=preprocess.resize) for r in rows]
    images = torch.stack([to_tensor(g, preprocess) for g in grays])
    views = [str(table.frame["view"].iat[r]) for r in rows]
    return Unit(rows, images, np.stack(grays), views)
