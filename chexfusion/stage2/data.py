"""Studies from the feature store: one item per study, padded into batches.

Each item holds the cached maps of a study's images (at most ``max_images``,
frontal first: the store keeps a study's images in canonical order), their view
indices, and the study's label. CXR-LT labels are study-level, so all images of
a study carry the same row of labels; should they differ, a class is positive
for the study when any image is, and scored unless every image ignores it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data.views import VIEW_INDEX


class StudyTable:
    """Per-study row ranges over a split's images (rows contiguous per study, as the store writes them)."""

    def __init__(self, meta: pd.DataFrame):
        study_ids = meta["study_id"].astype(str).to_numpy()
        starts = np.flatnonzero(np.r_[True, study_ids[1:] != study_ids[:-1]])
        ends = np.r_[starts[1:], len(study_ids)]
        self.study_ids = study_ids[starts]
        if len(set(self.study_ids)) != len(self.study_ids):
            raise ValueError("feature store rows of a study are not contiguous")
        self.starts, self.ends = starts, ends
        self.views = np.array([VIEW_INDEX[v] for v in meta["view"].astype(str)], dtype=np.int64)
        self.image_study = np.repeat(np.arange(len(starts)), ends - starts)

    def __len__(self) -> int:
        return len(self.starts)

    def study_labels(self, image_targets: np.ndarray, image_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        targets = np.maximum.reduceat(image_targets, self.starts, axis=0) if len(self.starts) else image_targets[:0]
        mask = np.maximum.reduceat(image_mask, self.starts, axis=0) if len(self.starts) else image_mask[:0]
        return targets.astype(np.float32), mask.astype(np.float32)


class StudyDataset(torch.utils.data.Dataset):
    def __init__(self, features: np.ndarray, shape: tuple[int, int, int], studies: StudyTable,
                 targets: np.ndarray | None, mask: np.ndarray | None, max_images: int):
        self.features, self.shape, self.studies = features, tuple(shape), studies
        self.targets, self.mask, self.max_images = targets, mask, max_images

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> dict:
        start = self.studies.starts[i]
        end = min(self.studies.ends[i], start + self.max_images)
        item = {"features": torch.from_numpy(np.ascontiguousarray(self.features[start:end])).view(-1, *self.shape),
                "views": torch.from_numpy(self.studies.views[start:end]), "study": i}
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
