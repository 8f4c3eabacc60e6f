"""An epoch number the DataLoader workers read from shared memory.

Augmentations and the streamed order draw from ``(seed, epoch, ...)``, and the
loop sets the epoch on the dataset in the main process. A worker kept alive
across epochs (``train.persistent_workers``) holds its own copy of the dataset,
so a plain attribute would stay at the epoch the worker was started in: every
epoch would repeat the first one's augmentations. A shared-memory tensor is the
same storage in every worker (forked or spawned), so ``set`` is seen by all.
"""

from __future__ import annotations

import torch


class SharedEpoch:
    """An int the main process sets and every DataLoader worker reads."""

    def __init__(self, epoch: int = 0):
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()
        self.set(epoch)

    def get(self) -> int:
        return int(self._value)

    def set(self, epoch: int) -> None:
        self._value.fill_(int(epoch))


class SharedEpochDataset:
    """A dataset the loop calls ``set_epoch`` on, its epoch in shared memory (set ``self._epoch = SharedEpoch()``)."""

    _epoch: SharedEpoch

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Seen by every worker, persistent ones included."""
        self._epoch.set(epoch)
