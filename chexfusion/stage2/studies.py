"""The studies of one split as stage-2 items, from whichever reader holds the split: one Dataset for both.

A *source* is where a split's studies come from; both kinds know the split's
layout up front (views, CSV rows, where each study starts and stops: enough to
label every study before any map is read) and yield :class:`StudyMaps`:

- :class:`MemorySource`: the split whole in memory, memory-mapped from an
  Arrow IPC copy (``FeatureStore.map_split``: the processes of a machine share
  one copy), chosen when its maps fit in ``features.max_memory_gb``; a shuffled epoch
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

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from ..errors import UserError
from ..feature_store.reader import buffer_shuffle


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


def _in_block(k: int, block: int, worker: int, workers: int) -> bool:
    """Whether the ``k``-th study of an order is the share of ``worker``: every W-th block of ``block`` studies."""
    return (k // block) % workers == worker


class MemorySource:
    """A split held in memory: random access, so a shuffled epoch is a permutation of its studies.

    ``block``: the studies of one global batch (batch size x processes), the unit DataLoader workers share.
    """

    def __init__(self, store, split: str, shuffle: bool = False, seed: int = 0, block: int = 1):
        self.features = self.layout = store.map_split(split)  # one copy per machine, however many processes
        self.shuffle, self.seed, self.block = shuffle, seed, block

    def studies(self, epoch: int = 0, worker: int = 0, workers: int = 1) -> Iterator[StudyMaps]:
        """The studies of ``worker``'s blocks of the epoch's order (the others cost nothing)."""
        n = len(self.layout)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        for k, i in enumerate(order.tolist()):
            if _in_block(k, self.block, worker, workers):
                start, stop = int(self.layout.study_starts[i]), int(self.layout.study_stops[i])
                maps = self.features.rows(start, stop).reshape(stop - start, *self.features.shape)
                yield StudyMaps(i, maps, self.layout.views[start:stop])


class StreamSource:
    """A split streamed row group by row group (``FeatureStore.iter_studies``); only its metadata is loaded."""

    def __init__(self, store, split: str, shuffle_buffer: int = 0, seed: int = 0, block: int = 1):
        self.store, self.split, self.shuffle_buffer, self.seed = store, split, shuffle_buffer, seed
        self.layout, self.block = store.split_metadata(split), block

    def studies(self, epoch: int = 0, worker: int = 0, workers: int = 1) -> Iterator[StudyMaps]:
        """Every study read (a streamed order is only known by reading it); those of ``worker``'s blocks yielded."""
        stream = self.store.iter_studies(self.split, shuffle_buffer=self.shuffle_buffer, seed=self.seed, epoch=epoch)
        for k, study in enumerate(stream):
            if _in_block(k, self.block, worker, workers):
                yield StudyMaps(study.index, study.features, study.views)


class ShardedSource:
    """The training split streamed in shares: each (process, lane) reads only its own row groups.

    Epoch ``e``: the split's row groups (each holds whole studies: the writer
    never cuts a study, ``schema.study_runs``) are permuted by ``(seed, e)``
    and their studies concatenated; each of the ``world`` processes takes one
    contiguous run of ``steps * batch`` studies (``steps`` = studies //
    (batch x world); the rest, under one global batch, wait for the next
    epoch, as ``drop_last`` drops them in memory), cut into ``lanes`` runs of
    whole batches. A lane passes its studies through a shuffle buffer drawn
    from ``(seed, e, rank, lane)`` and yields batches; the process trains on
    its lanes' batches round-robin (lane 0, 1, ..., lanes-1, lane 0, ...).
    DataLoader worker ``w`` of ``W`` reads the lanes ``w, w + W, ...``, and
    the DataLoader, which takes one batch from each worker in turn, then gives
    that same round-robin: the batches depend on (seed, world size, lanes),
    not on the number of workers, which must divide ``lanes``. A row group is
    read by the one lane that holds it, or by the two that share it at a run
    boundary, so an epoch reads the store about once in all.

    Checked against the loaders that exist: Hugging Face ``datasets``
    streaming (``split_dataset_by_node``) gives each node whole files when
    their number divides the world size and otherwise makes every node read
    every file and keep every world-th example (the reading this replaces),
    its shards are files, not row groups, and its shuffle is a buffer over a
    file order, so the batches change with the number of workers;
    ``pyarrow.dataset`` fragments split by row group
    (``ParquetFileFragment.split_by_row_group``) but leave assignment, order
    and resume to the caller, which is this class: it reads through the
    store's own row-group reader.
    """

    shards_by_process = True

    def __init__(self, store, split: str, *, seed: int, batch: int, rank: int, world: int, lanes: int,
                 shuffle_buffer: int):
        if not store.manifest.get("study_aligned"):
            raise UserError(f"feature store {store.path} was written before its row groups held whole studies, "
                            f"which streaming the training split needs: run chexfusion features with the same "
                            f"config to rewrite it")
        self.store, self.split, self.seed, self.batch = store, split, seed, batch
        self.rank, self.world, self.lanes, self.shuffle_buffer = rank, world, lanes, shuffle_buffer
        self.layout = store.split_metadata(split)
        self.groups = store.row_groups(split)  # (path, index, first row, rows)
        group_starts = np.array([g[2] for g in self.groups], dtype=np.int64)
        owner = np.searchsorted(group_starts, self.layout.study_starts, side="right") - 1
        self.first_study = np.searchsorted(owner, np.arange(len(self.groups) + 1))

    def steps(self) -> int:
        """Batches each process trains on per epoch."""
        return len(self.layout) // (self.batch * self.world)

    def lane_studies(self, epoch: int) -> list[np.ndarray]:
        """The study indices of each of this process's lanes in epoch ``epoch``, before the lane's shuffle."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
        ranges = [np.arange(self.first_study[g], self.first_study[g + 1]) for g in order]
        sequence = np.concatenate(ranges) if ranges else np.zeros(0, np.int64)
        steps, size = self.steps(), self.batch
        mine = sequence[self.rank * steps * size:(self.rank + 1) * steps * size]
        bounds = np.cumsum([0] + [steps // self.lanes + (v < steps % self.lanes) for v in range(self.lanes)])
        return [mine[bounds[v] * size:bounds[v + 1] * size] for v in range(self.lanes)]

    def studies(self, epoch: int = 0, worker: int = 0, workers: int = 1) -> Iterator[StudyMaps]:
        """``worker``'s lanes, one batch of each in turn (see the class docstring)."""
        if self.lanes % workers:
            raise UserError(f"train.num_workers {workers} must divide features.stream_lanes {self.lanes}")
        lanes = [self._lane(epoch, v, studies) for v, studies in enumerate(self.lane_studies(epoch))
                 if v % workers == worker]
        while lanes:
            for lane in list(lanes):
                batch = [study for _, study in zip(range(self.batch), lane)]
                if len(batch) < self.batch:
                    lanes.remove(lane)
                yield from batch

    def _lane(self, epoch: int, lane: int, studies: np.ndarray) -> Iterator[StudyMaps]:
        """One lane's studies read row group by row group, through its shuffle buffer."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, lane])
        yield from buffer_shuffle(self._read(studies), self.shuffle_buffer, rng)

    def _read(self, studies: np.ndarray) -> Iterator[StudyMaps]:
        """The maps of ``studies`` (a run of whole row groups, but for its ends), each row group read once."""
        layout, current, maps = self.layout, -1, None
        owners = (np.searchsorted(self.first_study, studies, side="right") - 1).tolist()
        # the row groups in the order the studies need them; the next one is decoded while this one is checked
        needed = [g for k, g in enumerate(owners) if not k or g != owners[k - 1]]
        reads = self.store.read_row_groups(self.groups, needed)
        for s, g in zip(studies.tolist(), owners):
            start, stop = int(layout.study_starts[s]), int(layout.study_stops[s])
            if g != current:
                current, maps = next(reads)
            base = self.groups[g][2]
            shaped = maps[start - base:stop - base].reshape(stop - start, *self.store.shape)
            yield StudyMaps(s, shaped.copy(), layout.views[start:stop])  # a buffered study must not pin its group


def open_source(store, split: str, reader: str, shuffle: bool, seed: int, shuffle_buffer: int, block: int = 1):
    """The source of ``split`` for ``reader`` (memory | stream); ``shuffle`` for the training split."""
    if reader == "memory":
        return MemorySource(store, split, shuffle=shuffle, seed=seed, block=block)
    return StreamSource(store, split, shuffle_buffer=shuffle_buffer if shuffle else 0, seed=seed, block=block)


class StudyItems(torch.utils.data.IterableDataset):
    """Training items from any source (see the module docstring); each DataLoader worker yields its share."""

    def __init__(self, source, targets: np.ndarray | None, mask: np.ndarray | None, max_images: int):
        self.source, self.targets, self.mask, self.max_images = source, targets, mask, max_images
        # a plain attribute: workers are started per epoch (stage 2 does not keep them, see train.loader)
        self.epoch = 0
        # a source that reads only this process's share must not be sliced again by accelerate (training/optim.py)
        self.shards_by_process = getattr(source, "shards_by_process", False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of studies: every one is yielded once per pass (over all workers)."""
        return len(self.source.layout)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for study in self.source.studies(self.epoch, worker, workers):
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
