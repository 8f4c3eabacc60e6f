"""Augmentations that suit radiographs, drawn from a per-sample random generator.

Radiographs tolerate small geometric changes (patient position, rotation,
magnification) and exposure changes (brightness, contrast, gamma), but not
vertical flips or large crops that cut the lung bases. Horizontal flip is
optional (CheXFusion uses it, at least as test-time augmentation).

Each call receives its own ``numpy.random.Generator`` derived from
``(seed, epoch, row)``, so the augmented images do not depend on the number of
data-loader workers, on the process count, or on where a resumed run restarted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from .image_dataset import is_skipped
from .shared_epoch import SharedEpoch, SharedEpochDataset


@dataclass
class AugmentConfig:
    enabled: bool = True
    hflip: float = 0.5  # probability
    rotate_deg: float = 7.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05  # fraction of the image size
    brightness: float = 0.1  # additive, in normalized units
    contrast: float = 0.15  # multiplicative +- around 1
    noise_std: float = 0.0  # extra "noisy student" noise, in normalized units

    @classmethod
    def strong(cls) -> "AugmentConfig":
        """The heavier noise a noisy-student student trains under."""
        return cls(hflip=0.5, rotate_deg=12.0, scale=(0.8, 1.2), translate=0.1, brightness=0.2, contrast=0.3,
                   noise_std=0.05)


class RadiographAugment:
    """Random affine + exposure jitter on a normalized [C, H, W] tensor."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        c = self.cfg
        if not c.enabled:
            return image
        # Draw every parameter unconditionally so the random stream does not depend on the config's branches.
        flip, angle, scale = rng.random(), rng.uniform(-c.rotate_deg, c.rotate_deg), rng.uniform(*c.scale)
        tx, ty = rng.uniform(-c.translate, c.translate, size=2) * image.shape[-1]
        brightness, contrast = rng.uniform(-c.brightness, c.brightness), rng.uniform(1 - c.contrast, 1 + c.contrast)
        noise_seed = int(rng.integers(2**31))
        if flip < c.hflip:
            image = torch.flip(image, dims=[-1])
        fill = float(image.min())
        image = TF.affine(image, angle=float(angle), translate=[int(round(tx)), int(round(ty))], scale=float(scale),
                          shear=[0.0, 0.0], interpolation=TF.InterpolationMode.BILINEAR, fill=fill)
        mean = image.mean()
        image = (image - mean) * contrast + mean + brightness
        if c.noise_std > 0:
            gen = torch.Generator().manual_seed(noise_seed)
            image = image + c.noise_std * torch.randn(image.shape, generator=gen)
        return image


def sample_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, row])


class AugmentedDataset(SharedEpochDataset, torch.utils.data.Dataset):
    """Wraps an image dataset and augments each sample with its (seed, epoch, row) generator.

    A skipped-image marker (``skip_bad_images``: a row and an error, no image) passes through unchanged, so
    the collate function drops and counts it as it does for predict and the feature store."""

    def __init__(self, base, augment: RadiographAugment, seed: int):
        self.base, self.augment, self.seed, self._epoch = base, augment, seed, SharedEpoch()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        if not is_skipped(item):
            item["image"] = self.augment(item["image"], sample_rng(self.seed, self.epoch, int(item["row"])))
        return item
