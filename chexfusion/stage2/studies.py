"""The studies of one split as stage-2 items, from whichever reader holds the split: one Dataset for both.

A *source* is where a split's studies come from; both kinds know the split's
layout up front (views, CSV rows, where each study starts and stops: enough to
label every study before any map is read) and yield :class:`StudyMaps`:

- :class:`MemorySource`: the split loaded whole (``FeatureStore.load_split``),
  chosen when its maps fit in ``features.max_memory_gb``; a shuffled epoch
  ``e`` visits the studies in the permutation drawn from ``(seed, e)``;
- :class:`StreamSource`: the split read row group by row group
  (``FeatureStore.iter_studies``), for a split larger than memory; a shuffled
  epoch visits row groups in a permutation from ``(seed, e)`` and passes whole
  studies through a shuffle buffer, so memory holds two row groups and the
  buffer whatever the store's size.

Unshuffled (evaluation, the stage-1 baseline), both yield the studies in store
order, so the two readers score the same weights the same. ``features.reader``
forces either; :func:`choose_reader` decides ``auto``.

:class:`StudyItems` turns a source into training items: at most ``max_images``
maps of a study (frontal first: the store keeps a study's images together and
in canonical order), their view indices, the study's label. With DataLoader
workers, each worker takes every W-th block of ``block`` studies (one global
batch): batches come out in the order of a single reader, so
``train.num_workers`` does not change results. Under several processes
accelerate wraps the dataset in ``IterableDatasetShard`` (``dispatch_batches``
is off, see ``training.make_accelerator``): every process walks the whole
order and keeps its slice of each global batch, so each study is trained on
once per epoch overall. The number of studies comes from the layout, so the
loader has a length and ``drop_last`` drops the same last batch either way.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch


class StudyMaps(NamedTuple):
    """One study as a source yields it: its index in the split's store order, its maps and view indices."""

    index: int
    features: np.ndarray  # [n, C, h, w] (read-only when it is a view of the store's buffers)
    views: np.ndarray  # [n] int64


def choose_reader(features_cfg, store, split: str) -> tuple[str, str]:
    """``"memory"`` or ``"stream"`` for ``split``, and why (for the log)."""
    if features_cfg.reader != "auto":
        return features_cfg.reader, f"features.reader is {features_cfg.reader}"
    size = f"its maps take {store.split_nbytes(split) / 1e9:.3g} GB"
    if store.fits_in_memory(split, features_cfg.max_memory_gb):
        return "memory", f"{size}, within features.max_memory_gb {features_cfg.max_memory_gb:g}"
    return "stream", f"{size}, over features.max_memory_gb {features_cfg.max_memory_gb:g}"


class MemorySource:
    """A split held in memory: random access, so a shuffled epoch is a permutation of its studies."""

    def __init__(self, store, split: str, shuffle: bool = False, seed: int = 0):
        self.features = self.layout = store.load_split(split)
        self.shuffle, self.seed = shuffle, seed

    def studies(self, epoch: int = 0, keep: Callable[[int], bool] = lambda k: True) -> Iterator[StudyMaps]:
        """The ``k``-th study of the epoch's order for every ``k`` that ``keep`` accepts (the others cost nothing)."""
        n = len(self.layout)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        for k, i in enumerate(order.tolist()):
            if keep(k):
                start, stop = int(self.layout.study_starts[i]), int(self.layout.study_stops[i])
                maps = self.features.rows(start, stop).reshape(stop - start, *self.features.shape)
                yield StudyMaps(i, maps, self.layout.views[start:stop])


class StreamSource:
    """A split streamed row group by row group (``FeatureStore.iter_studies``); only its metadata is loaded."""

    def __init__(self, store, split: str, shuffle_buffer: int = 0, seed: int = 0):
        self.store, self.split, self.shuffle_buffer, self.seed = store, split, shuffle_buffer, seed
        self.layout = store.split_metadata(split)

    def studies(self, epoch: int = 0, keep: Callable[[int], bool] = lambda k: True) -> Iterator[StudyMaps]:
        """Every study read (a streamed order is only known by reading it); those ``keep`` accepts yielded."""
        stream = self.store.iter_studies(self.split, shuffle_buffer=self.shuffle_buffer, seed=self.seed, epoch=epoch)
        for k, study in enumerate(stream):
            if keep(k):
                yield StudyMaps(study.index, study.features, study.views)


def open_source(store, split: str, reader: str, shuffle: bool, seed: int, shuffle_buffer: int):
    """The source of ``split`` for ``reader`` (memory | stream); ``shuffle`` for the training split."""
    if reader == "memory":
        return MemorySource(store, split, shuffle=shuffle, seed=seed)
    return StreamSource(store, split, shuffle_buffer=shuffle_buffer if shuffle else 0, seed=seed)


class StudyItems(torch.utils.data.IterableDataset):
    """Training items from any source (see the module docstring); ``block``: studies of one global batch."""

    def __init__(self, source, targets: np.ndarray | None, mask: np.ndarray | None, max_images: int,
                 block: int = 1):
        self.source, self.targets, self.mask, self.max_images = source, targets, mask, max_images
        self.block, self.epoch = block, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of studies: every one is yielded once per pass (over all workers)."""
        return len(self.source.layout)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for study in self.source.studies(self.epoch, keep=lambda k: (k // self.block) % workers == worker):
            yield self.item(study)

    def item(self, study: StudyMaps) -> dict:
        n = min(len(study.views), self.max_images)
        # one copy: a map is a read-only view of an Arrow buffer, and a batch must own its memory
        maps = np.require(study.features[:n], requirements=["C", "W"])
        item = {"features": torch.from_numpy(maps), "views": torch.from_numpy(study.views[:n]), "study": study.index}
        if self.targets is not None:
            item["target"] = torch.from_numpy(self.targets[study.index])
            item["mask"] = torch.from_numpy(self.mask[study.index])
        return item


def study_labels(layout, image_targets: np.ndarray, image_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-study targets and mask from per-image ones (rows in store order).

    CXR-LT labels are study-level, so all images of a study carry the same row;
    should they differ, a class is positive for the study when any image is,
    and scored unless every image ignores it.
    """
    if len(layout) == 0:
        return image_targets[:0].astype(np.float32), image_mask[:0].astype(np.float32)
    targets = np.maximum.reduceat(image_targets, layout.study_starts, axis=0)
    mask = np.maximum.reduceat(image_mask, layout.study_starts, axis=0)
    return targets.astype(np.float32), mask.astype(np.float32)


def image_study(layout) -> np.ndarray:
    """For each image (store order), the index of its study."""
    return np.repeat(np.arange(len(layout)), layout.study_stops - layout.study_starts)


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
