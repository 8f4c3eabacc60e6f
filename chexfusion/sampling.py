"""Repeat-factor sampling (Gupta et al., CVPR 2019, LVIS), class-aware as the CXR-LT 2026 winner used it.

Each class ``c`` with training image frequency ``f_c`` (share of images labelled ``c``) has the repeat factor
``r_c = max(1, sqrt(t / f_c))``; an image is repeated ``r_i = max over its positive classes of r_c`` times per
epoch (1 for an image without positives), capped at ``max_repeat`` (the winner: t = 0.01, at most 10x). So a
class seen in fewer than ``t`` of the images is seen about ``t`` of the time, and head classes are untouched.

An epoch holds ``L = round(sum r_i)`` draws, the same number every epoch so the learning-rate schedule knows its
length: every image ``floor(r_i)`` times, plus ``L - sum floor(r_i)`` further images drawn without replacement
with probability proportional to the fractional parts (the stochastic rounding of the LVIS sampler, at a fixed
length). The draw and the order come from (seed, epoch), so every rank and a resumed run see the same epoch.

Class-aware sampling (Shen et al., ECCV 2016; used by CXR-LT 2023 teams) is a different rule: each draw picks
a class uniformly, then one of its positive images uniformly, so every class -- head or tail -- fills the same
share of an epoch (repeat-factor only lifts classes below ``t`` and leaves the rest alone). Images without
any positive label form one more group, so they are still seen (as often as any one class). An epoch holds as
many draws as there are images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .errors import UserError

SAMPLERS = ("uniform", "repeat_factor", "class_aware")


@dataclass
class SamplingConfig:
    method: str = "uniform"  # uniform | repeat_factor | class_aware
    threshold: float = 0.01  # t of repeat-factor sampling
    max_repeat: float = 10.0  # cap on an image's repeat factor

    def validate(self) -> None:
        if self.method not in SAMPLERS:
            raise UserError(f"config key 'sampling.method' must be one of {', '.join(SAMPLERS)}, got '{self.method}'")
        if not 0 < self.threshold <= 1 or self.max_repeat < 1:
            raise UserError("config keys 'sampling.threshold' (in (0, 1]) and 'sampling.max_repeat' (>= 1) are out "
                            "of range")


def repeat_factors(targets: np.ndarray, threshold: float, max_repeat: float = np.inf) -> np.ndarray:
    """``r_i`` per image from its 0/1 labels [N, K] (the formula of the module docstring)."""
    positive = np.asarray(targets) > 0.5
    frequency = positive.mean(axis=0)
    with np.errstate(divide="ignore"):
        per_class = np.maximum(1.0, np.sqrt(threshold / frequency))  # a class without positives: inf, never used
    factors = np.where(positive, per_class[None, :], 1.0).max(axis=1, initial=1.0)
    return np.minimum(factors, max_repeat)


class RepeatFactorSampler(torch.utils.data.Sampler):
    """Indices of one epoch under repeat factors ``factors`` [N]; ``set_epoch`` fixes the draw."""

    def __init__(self, factors: np.ndarray, seed: int):
        self.factors = np.asarray(factors, dtype=np.float64)
        self.seed, self.epoch = seed, 0
        self.length = int(round(self.factors.sum()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        whole = np.floor(self.factors).astype(np.int64)
        indices = np.repeat(np.arange(len(self.factors)), whole)
        extra = self.length - len(indices)
        fraction = self.factors - whole
        if extra > 0:
            chosen = rng.choice(len(self.factors), size=extra, replace=False, p=fraction / fraction.sum())
            indices = np.concatenate([indices, chosen])
        return rng.permutation(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def __len__(self) -> int:
        return self.length


class ClassAwareSampler(torch.utils.data.Sampler):
    """``length`` draws per epoch: a class (or the no-positive group) uniformly, then one of its images
    uniformly; from (seed, epoch). ``targets`` [N, K] 0/1; a class without positives is never picked."""

    def __init__(self, targets: np.ndarray, seed: int, length: int | None = None):
        positive = np.asarray(targets) > 0.5
        groups = [np.flatnonzero(positive[:, k]) for k in range(positive.shape[1])]
        groups.append(np.flatnonzero(~positive.any(axis=1)))
        self.groups = [g for g in groups if len(g)]
        self.seed, self.epoch = seed, 0
        self.length = len(positive) if length is None else length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        picked = rng.integers(len(self.groups), size=self.length)
        within = rng.random(self.length)
        sizes = np.array([len(g) for g in self.groups])
        offsets = np.floor(within * sizes[picked]).astype(np.int64)
        return np.array([self.groups[g][o] for g, o in zip(picked, offsets)], dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def __len__(self) -> int:
        return self.length
