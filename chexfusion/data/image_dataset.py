"""The per-image torch Dataset used by stage 1, feature extraction and predict.

A bad image either stops the run with a one-line error naming the file or,
with ``skip_bad_images``, is skipped. A skipped item must still say which row
it was (a bare ``None`` cannot), so it comes back as a small marker dict
``{"row": r, "error": "..."}``; :func:`collate_images` drops markers from the
batch and lists their rows under ``batch["skipped"]`` so the caller counts and
reports them at the end instead of losing them silently.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from .cxr_lt import CxrLtTable
from .images import MAX_IMAGE_PIXELS, ImageError, Preprocess, read_image, to_tensor
from .labels import LabelPolicy
from .views import VIEW_INDEX


def is_skipped(item) -> bool:
    """Whether a dataset item is a skipped-image marker (or None) rather than an image."""
    return item is None or "image" not in item


class ImageDataset(torch.utils.data.Dataset):
    """Rows of a CXR-LT table as normalized image tensors with their targets and mask."""

    def __init__(
        self,
        table: CxrLtTable,
        image_root: str | os.PathLike,
        preprocess: Preprocess,
        policy: LabelPolicy | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        skip_bad_images: bool = False,
        rows: np.ndarray | None = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ):
        self.table = table
        self.preprocess = preprocess
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.max_pixels = max_pixels
        self.rows = np.arange(len(table), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(table)):
            raise IndexError(f"rows must index the table's {len(table)} rows")
        self.paths = table.image_paths(image_root)
        self.views = table.frame["view"].map(VIEW_INDEX).to_numpy(dtype=np.int64)
        if table.has_labels:
            targets, mask = table.targets(policy)
            self.targets, self.mask = torch.from_numpy(targets), torch.from_numpy(mask)
        else:
            self.targets = self.mask = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        try:
            gray = read_image(self.paths[row], self.preprocess.image_size, self.max_pixels, self.preprocess.resize,
                              intensity=self.preprocess.intensity)
        except ImageError as exc:
            if not self.skip_bad_images:
                raise
            return {"row": row, "error": str(exc)}
        image = to_tensor(gray, self.preprocess)
        if self.transform is not None:
            image = self.transform(image)
        item = {"image": image, "row": row, "view": int(self.views[row])}
        if self.targets is not None:
            item["target"] = self.targets[row]
            item["mask"] = self.mask[row]
        return item


def collate_images(batch: list[dict | None]) -> dict:
    """Stack the images of a batch; skipped items are dropped and listed.

    Returns ``image`` [B, C, H, W], ``row`` and ``view`` (int64 [B]), ``target``
    and ``mask`` [B, K] when labelled, ``skipped`` (table rows of the dropped
    items; -1 for a bare ``None``) and ``skipped_errors`` (their messages).
    When every item was skipped, ``row`` is empty and ``image`` is absent.
    """
    kept = [item for item in batch if not is_skipped(item)]
    dropped = [item for item in batch if is_skipped(item)]
    out: dict = {
        "row": torch.tensor([item["row"] for item in kept], dtype=torch.int64),
        "skipped": [-1 if item is None else int(item["row"]) for item in dropped],
        "skipped_errors": ["" if item is None else item.get("error", "") for item in dropped],
    }
    if kept:
        out["image"] = torch.stack([item["image"] for item in kept])
        out["view"] = torch.tensor([item["view"] for item in kept], dtype=torch.int64)
        if "target" in kept[0]:
            out["target"] = torch.stack([item["target"] for item in kept])
            out["mask"] = torch.stack([item["mask"] for item in kept])
    return out
