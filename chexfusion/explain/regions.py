"""Ground-truth regions of findings, read from a file and put in the model's input frame.

Two layouts are read (chosen by the header):

- **chexfusion** (``chexfusion synth`` writes one per split, ``<split>_regions.csv``; any box
  CSV in this layout works): ``dicom_id, class`` and either ``mask`` (a PNG
  path relative to the file's folder, non-zero inside, the image's size) or
  ``x_min, y_min, x_max, y_max`` (pixels of the original image). A class must
  be one of the model's and an image one of the ``--csv``'s: anything else is
  a user error naming the line.
- **VinDr-CXR** ``train.csv`` / ``test.csv`` (``image_id, rad_id, class_name,
  x_min, y_min, x_max, y_max``, one row per reader and box): a label maps to
  the project classes the external label table names for it (``Nodule/Mass``
  to both Nodule and Mass); the boxes of every reader are united. Rows without
  a box (``No finding``) and labels that map to no class of the model are
  counted as skipped, not errors: they are part of the format.

Several rows for one image and class are united. A region becomes a boolean
mask of the model's input (``[S, S]``) by the same resize as the image
(squash or letterbox, :class:`chexfusion.data.images.Preprocess`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..data.external import label_rules, normalize_label, source_labels
from ..data.images import _content_size, open_checked
from ..errors import UserError

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
VINDR_COLUMNS = ("image_id", "class_name")


@dataclass
class Regions:
    """dicom_id -> class -> shapes (("mask", path) or ("box", x0, y0, x1, y1)); what was skipped and why."""

    shapes: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    skipped: dict = field(default_factory=lambda: defaultdict(int))

    def classes_of(self, dicom_id: str) -> list[str]:
        return sorted(self.shapes.get(dicom_id, {}))

    def keep_only(self, classes: list[str]) -> None:
        """Drop the regions of other classes (counted as skipped)."""
        for per_class in self.shapes.values():
            for name in [c for c in per_class if c not in classes]:
                self.skipped["findings not in --classes"] += 1
                del per_class[name]


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"region file not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def _box(path: Path, frame: pd.DataFrame, i: int) -> tuple | None:
    """The row's box, None when it has none (all four blank); a partial or non-numeric box is an error."""
    cells = [frame[c].iat[i].strip() for c in BOX_COLUMNS]
    if not any(cells):
        return None
    try:
        x0, y0, x1, y1 = (float(c) for c in cells)
    except ValueError:
        raise UserError(f"{path} line {i + 2}: box {cells} is not four numbers") from None
    if not (x1 > x0 and y1 > y0):
        raise UserError(f"{path} line {i + 2}: empty box (x_min {x0}, y_min {y0}, x_max {x1}, y_max {y1})")
    return ("box", x0, y0, x1, y1)


def _vindr_classes(classes: list[str]) -> dict[str, list[str]]:
    """Normalised VinDr label -> the model's classes its box marks."""
    out = {normalize_label(name): [] for name in source_labels("vindr")}
    for rule in label_rules("vindr"):
        if rule.project_class in classes:
            out[normalize_label(rule.source_label)].append(rule.project_class)
    return out


def _read_vindr(path: Path, frame: pd.DataFrame, images: set, classes: list[str]) -> Regions:
    regions, targets = Regions(), _vindr_classes(classes)
    for i in range(len(frame)):
        image, label = frame["image_id"].iat[i].strip(), frame["class_name"].iat[i]
        if normalize_label(label) not in targets:
            raise UserError(f"{path} line {i + 2}, column 'class_name': unknown VinDr label '{label}'")
        if image not in images:
            raise UserError(f"{path} line {i + 2}: image '{image}' is not in the --csv")
        box = _box(path, frame, i)
        if box is None or not targets[normalize_label(label)]:
            regions.skipped["no box" if box is None else f"label '{label}' maps to no class of the model"] += 1
            continue
        for name in targets[normalize_label(label)]:
            regions.shapes[image][name].append(box)
    return regions


def _read_chexfusion(path: Path, frame: pd.DataFrame, images: set, classes: list[str]) -> Regions:
    has_mask, has_box = "mask" in frame.columns, all(c in frame.columns for c in BOX_COLUMNS)
    if not (has_mask or has_box):
        raise UserError(f"{path}: needs a 'mask' column or the box columns {', '.join(BOX_COLUMNS)}")
    regions, known = Regions(), set(classes)
    for i in range(len(frame)):
        image, name = frame["dicom_id"].iat[i].strip(), frame["class"].iat[i].strip()
        if image not in images:
            raise UserError(f"{path} line {i + 2}: image '{image}' is not in the --csv")
        if name not in known:
            raise UserError(f"{path} line {i + 2}: class '{name}' is not one of the model's classes")
        mask = frame["mask"].iat[i].strip() if has_mask else ""
        shape = ("mask", path.parent / mask) if mask else (_box(path, frame, i) if has_box else None)
        if shape is None:
            raise UserError(f"{path} line {i + 2}: neither a mask nor a box")
        regions.shapes[image][name].append(shape)
    return regions


def read_regions(path: str | os.PathLike, dicom_ids, classes: list[str]) -> Regions:
    """The regions of ``path`` for the images ``dicom_ids`` and the model's ``classes`` (layout from the header)."""
    path = Path(path)
    frame = _read(path)
    images = set(map(str, dicom_ids))
    if all(c in frame.columns for c in VINDR_COLUMNS):
        return _read_vindr(path, frame, images, classes)
    if "dicom_id" in frame.columns and "class" in frame.columns:
        return _read_chexfusion(path, frame, images, classes)
    raise UserError(f"{path}: not a region file (needs dicom_id and class columns, or VinDr-CXR's image_id and "
                    f"class_name)")


def _rasterise(shape, size: tuple[int, int]) -> np.ndarray:
    """One shape as a bool mask of the original image (``size`` = (width, height))."""
    width, height = size
    if shape[0] == "mask":
        try:
            with open_checked(shape[1], str(shape[1]), formats=None) as image:
                mask = np.asarray(image.convert("L")) > 0
        except (OSError, ValueError) as exc:
            raise UserError(f"region mask {shape[1]}: cannot read it ({exc})") from None
        if mask.shape != (height, width):
            raise UserError(f"region mask {shape[1]} is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
        return mask
    _, x0, y0, x1, y1 = shape
    mask = np.zeros((height, width), dtype=bool)
    mask[max(0, int(np.floor(y0))):max(0, int(np.ceil(y1))), max(0, int(np.floor(x0))):max(0, int(np.ceil(x1)))] = True
    return mask


def model_frame_mask(shapes: list, size: tuple[int, int], image_size: int, resize: str) -> np.ndarray:
    """The union of ``shapes`` on an image of ``size`` (width, height) as a bool ``[S, S]`` mask of the model input."""
    union = np.zeros(size[::-1], dtype=bool)
    for shape in shapes:
        union |= _rasterise(shape, size)
    content = _content_size(size[0], size[1], image_size, resize)
    scaled = Image.fromarray(union.astype(np.uint8) * 255).resize(content, Image.Resampling.BILINEAR)
    frame = Image.new("L", (image_size, image_size), 0)
    frame.paste(scaled, ((image_size - content[0]) // 2, (image_size - content[1]) // 2))
    out = np.asarray(frame) >= 128
    if union.any() and not out.any():  # a region smaller than a model pixel keeps its nearest pixel
        ys, xs = np.nonzero(union)
        cy = int((ys.mean() + 0.5) * content[1] / size[1]) + (image_size - content[1]) // 2
        cx = int((xs.mean() + 0.5) * content[0] / size[0]) + (image_size - content[0]) // 2
        out = out.copy()
        out[min(cy, image_size - 1), min(cx, image_size - 1)] = True
    return out


def image_size_of(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a radiograph from its header (DICOM Columns/Rows, else PIL) without decoding pixels."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    with open_checked(path, str(path), formats=None) as image:
        return image.size
