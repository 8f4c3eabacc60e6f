"""Frozen stage-1 backbone(s) or pretrained encoder(s) -> the feature maps of a run of images, each image
through its view's backbone.

Maps are pooled and rounded to the store dtype by :class:`routing.RoutedBackbones`,
the same object ``chexfusion predict`` applies to raw images, so a cached map
and a freshly computed one are the same numbers. Batches never cross a shard
boundary (the caller's batch sampler guarantees it): a resumed run then sees
exactly the batches of an uninterrupted one, so even batch-size-dependent
kernels give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.image_dataset import ImageDataset, collate_images
from ..data.views import VIEWS
from ..errors import UserError
from .routing import RoutedBackbones
from .schema import NUMPY_DTYPES


@dataclass
class ExtractedBatch:
    rows: np.ndarray  # table rows that have a map, in the order given
    maps: np.ndarray  # [len(rows), C*h*w] in the store dtype
    skipped: list[tuple[int, str]]  # (table row, reason) of unreadable images


class FeatureExtractor:
    """The backbones of a store's routing slots, in eval mode on one device, gradients off."""

    def __init__(self, expected: dict, device):
        self.dtype, self.shape = expected["dtype"], tuple(expected["shape"])
        loaded: dict[str, torch.nn.Module] = {}
        backbones: dict[str, torch.nn.Module] = {}
        for slot, entry in expected["backbones"].items():
            key = entry.get("encoder") or str(Path(entry["run"]).resolve())
            if key not in loaded:
                loaded[key] = self._load(entry)
            backbones[slot] = loaded[key]
        self.routed = RoutedBackbones(backbones, expected["routing"], expected["unknown_view"], expected["pool"],
                                      self.dtype, device, self.shape)

    def _load(self, entry: dict) -> torch.nn.Module:
        """A slot's map extractor (a stage-1 run's backbone or a frozen encoder), as the manifest recorded it."""
        if entry.get("encoder"):
            from .sources import load_encoder

            found = load_encoder(entry["encoder"], entry["weights_sha256"])
            self.preprocess = found.preprocess
            return found.model
        from ..stage1.model import load_stage1_run

        run = load_stage1_run(entry["run"])
        if run.weights_sha256 != entry["weights_sha256"]:
            raise UserError(f"stage-1 run {entry['run']} changed while the feature store was being planned: "
                            "run chexfusion features again")
        self.preprocess = run.preprocess
        return run.model.backbone

    def maps(self, images: torch.Tensor, views: list[str]) -> torch.Tensor:
        """``[B, C, h, w]`` maps in the store dtype, on the CPU, in the order of ``images``."""
        return self.routed.maps(images, views).cpu()

    def batches(self, table, image_root, rows: np.ndarray, batch_sampler, num_workers: int,
                skip_bad_images: bool):
        """Yield an :class:`ExtractedBatch` per batch of ``batch_sampler`` (positions into ``rows``)."""
        dataset = ImageDataset(table, image_root, self.preprocess, None, skip_bad_images=skip_bad_images, rows=rows)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                                             collate_fn=collate_images)
        width = int(np.prod(self.shape))
        np_dtype = NUMPY_DTYPES[self.dtype]
        for batch in loader:
            skipped = list(zip(batch["skipped"], batch["skipped_errors"]))
            if "image" not in batch:
                yield ExtractedBatch(np.zeros(0, np.int64), np.zeros((0, width), np_dtype), skipped)
                continue
            views = [VIEWS[v] for v in batch["view"].tolist()]
            maps = self.maps(batch["image"], views).reshape(len(views), width).numpy()
            yield ExtractedBatch(batch["row"].numpy(), maps.view(np_dtype), skipped)
