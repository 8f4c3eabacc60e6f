"""The deterministic epoch order: the same on every process and after a resume."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


class EpochPermutationSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation drawn from (seed, epoch): the same order on every rank and after a resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n
