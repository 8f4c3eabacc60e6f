"""Studies from the feature store: one item per study, padded into batches.

Each item holds the cached maps of a study's images (at most ``max_images``,
frontal first: the store keeps a study's images together and in canonical
order), their view indices, and the study's label. CXR-LT labels are
study-level, so all images of a study carry the same row of labels; should they
differ, a class is positive for the study when any image is, and scored unless
every image ignores it. A split too large for memory yields the same items
from ``streaming.StreamedStudies``.
"""

from __future__ import annotations

import numpy as np
import torch


def study_labels(split, image_targets: np.ndarray, image_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-study targets and mask from per-image ones (rows in store order)."""
    if len(split) == 0:
        return image_targets[:0].astype(np.float32), image_mask[:0].astype(np.float32)
    targets = np.maximum.reduceat(image_targets, split.study_starts, axis=0)
    mask = np.maximum.reduceat(image_mask, split.study_starts, axis=0)
    return targets.astype(np.float32), mask.astype(np.float32)


def image_study(split) -> np.ndarray:
    """For each image (store order), the index of its study."""
    return np.repeat(np.arange(len(split)), split.study_stops - split.study_starts)


class StudyDataset(torch.utils.data.Dataset):
    """Items of a :class:`~chexfusion.feature_store.SplitFeatures`: maps are views of the store's buffers."""

    def __init__(self, split, targets: np.ndarray | None, mask: np.ndarray | None, max_images: int):
        self.split, self.targets, self.mask, self.max_images = split, targets, mask, max_images

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        start = int(self.split.study_starts[i])
        stop = min(int(self.split.study_stops[i]), start + self.max_images)
        maps = torch.from_numpy(np.array(self.split.rows(start, stop)))  # one copy: Arrow buffers are read-only
        item = {"features": maps.view(-1, *self.split.shape), "views": torch.from_numpy(self.split.views[start:stop]),
                "study": i}
        if self.targets is not None:
            item["target"] = torch.from_numpy(self.targets[i])
            item["mask"] = torch.from_numpy(self.mask[i])
        return item


def collate_studies(items: list[dict]) -> dict:
    """Pad studies to the largest in the batch; ``image_mask`` marks the real images (True)."""
    n_max = max(it["features"].shape[0] for it in items)
    first = items[0]["features"]
    features = torch.zeros((len(items), n_max, *first.shape[1:]), dtype=first.dtype)
    views = torch.zeros((len(items), n_max), dtype=torch.long)
    image_mask = torch.zeros((len(items), n_max), dtype=torch.bool)
    for b, it in enumerate(items):
        n = it["features"].shape[0]
        features[b, :n], views[b, :n], image_mask[b, :n] = it["features"], it["views"], True
    batch = {"features": features, "views": views, "image_mask": image_mask,
             "study": torch.tensor([it["study"] for it in items])}
    if "target" in items[0]:
        batch["target"] = torch.stack([it["target"] for it in items])
        batch["mask"] = torch.stack([it["mask"] for it in items])
    return batch
