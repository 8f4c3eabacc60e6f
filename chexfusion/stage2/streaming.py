"""Stage 2 over a store larger than memory: which reader each split gets, and studies streamed as items.

A split whose maps fit in ``features.max_memory_gb`` is loaded whole
(:class:`~chexfusion.stage2.data.StudyDataset`); a larger one is streamed with
:meth:`FeatureStore.iter_studies`, so memory holds two row groups and the
shuffle buffer whatever the store's size. ``features.reader`` forces either.

:class:`StreamedStudies` yields the items of ``StudyDataset`` (same maps, same
``max_images`` cut, same labels), batched by the same ``collate_studies``. The
training split streams in an order drawn from (seed, epoch) alone, so a resumed
run skips the batches it already trained on and sees the rest as an
uninterrupted run does; validation and test stream in store order. The number
of studies comes from the split's metadata, so the loader has a length and
``drop_last`` drops the same last batch as in memory.

Workers and processes. With DataLoader workers, every worker reads the whole
stream and keeps every W-th block of ``block`` studies (one global batch):
batches come out in the order of a single reader, so ``train.num_workers``
does not change results; each worker holds its own two row groups and buffer,
and one worker is enough to read ahead of training. Under several processes
accelerate wraps the dataset in ``IterableDatasetShard`` (``dispatch_batches``
is off, see ``training.make_accelerator``): every process reads the whole
stream and keeps its slice of each global batch, the slices the in-memory
sampler would give it, so each study is trained on once per epoch overall.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.shared_epoch import SharedEpoch


def choose_reader(features_cfg, store, split: str) -> tuple[str, str]:
    """``"memory"`` or ``"stream"`` for ``split``, and why (for the log)."""
    if features_cfg.reader != "auto":
        return features_cfg.reader, f"features.reader is {features_cfg.reader}"
    size = f"its maps take {store.split_nbytes(split) / 1e9:.3g} GB"
    if store.fits_in_memory(split, features_cfg.max_memory_gb):
        return "memory", f"{size}, within features.max_memory_gb {features_cfg.max_memory_gb:g}"
    return "stream", f"{size}, over features.max_memory_gb {features_cfg.max_memory_gb:g}"


class StreamedStudies(torch.utils.data.IterableDataset):
    """The items of ``StudyDataset`` for a split streamed row group by row group (see the module docstring).

    ``shuffle_buffer`` 0 streams in store order (evaluation); otherwise the order
    of epoch ``e`` (:meth:`set_epoch`) is drawn from ``(seed, e)``. ``block``: the
    studies of one global batch (batch size x processes), the unit workers share.
    """

    def __init__(self, store, split: str, num_studies: int, targets: np.ndarray | None, mask: np.ndarray | None,
                 max_images: int, shuffle_buffer: int = 0, seed: int = 0, block: int = 1):
        self.store, self.split, self.num_studies = store, split, num_studies
        self.targets, self.mask, self.max_images = targets, mask, max_images
        self.shuffle_buffer, self.seed, self.block, self._epoch = shuffle_buffer, seed, block, SharedEpoch()

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Seen by every worker, persistent ones included (``SharedEpoch``)."""
        self._epoch.set(epoch)

    def __len__(self) -> int:
        """Number of studies: every one is yielded once per pass (over all workers)."""
        return self.num_studies

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        studies = self.store.iter_studies(self.split, shuffle_buffer=self.shuffle_buffer, seed=self.seed,
                                          epoch=self.epoch)
        for k, study in enumerate(studies):
            if (k // self.block) % workers == worker:
                yield self.item(study)

    def item(self, study) -> dict:
        n = min(len(study.views), self.max_images)
        # a map streamed in store order is a read-only view of its row group: copied, as StudyDataset copies
        maps = np.require(study.features[:n], requirements=["C", "W"])
        item = {"features": torch.from_numpy(maps), "views": torch.from_numpy(study.views[:n]), "study": study.index}
        if self.targets is not None:
            item["target"] = torch.from_numpy(self.targets[study.index])
            item["mask"] = torch.from_numpy(self.mask[study.index])
        return item
