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

from ..errors import UserError
from .image_dataset import is_skipped
from .shared_epoch import SharedEpoch, SharedEpochDataset
from .timm_augment import ERASING_MODES, PolicyOnTensor, policy_transform, random_erasing, seeded_globals

MIXUP_MODES = ("batch", "pair", "elem")


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
    # timm's recipes (off by default; data/timm_augment.py, data/mixing.py)
    policy: str = "none"  # none | RandAugment spec (rand-m9-mstd0.5) | AutoAugment policy (original, v0, ...)
    random_erasing: float = 0.0  # probability of erasing one rectangle (timm RandomErasing)
    random_erasing_mode: str = "const"  # const (0 = the mean) | rand | pixel
    mixup_alpha: float = 0.0  # > 0: MixUp with Beta(alpha, alpha) (timm Mixup over images, targets and masks)
    cutmix_alpha: float = 0.0  # > 0: CutMix with Beta(alpha, alpha)
    mixup_prob: float = 1.0  # probability of mixing a batch (or an element, mixup_mode elem / pair)
    mixup_switch_prob: float = 0.5  # CutMix instead of MixUp when both are on
    mixup_mode: str = "batch"  # batch | pair | elem

    def validate(self, key: str = "augment", image_size: int = 128) -> None:
        """The timm options checked at load: a policy timm cannot read, an erasing mode or mixing mode not
        known, a probability outside [0, 1] are one-line errors."""
        if self.policy != "none":
            policy_transform(self.policy, image_size)
        if self.random_erasing_mode not in ERASING_MODES:
            raise UserError(f"config key '{key}.random_erasing_mode' must be one of {', '.join(ERASING_MODES)}, "
                            f"got '{self.random_erasing_mode}'")
        if self.mixup_mode not in MIXUP_MODES:
            raise UserError(f"config key '{key}.mixup_mode' must be one of {', '.join(MIXUP_MODES)}, "
                            f"got '{self.mixup_mode}'")
        for name in ("random_erasing", "mixup_prob", "mixup_switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"config key '{key}.{name}' must be in [0, 1], got {getattr(self, name)}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise UserError(f"config keys '{key}.mixup_alpha' and '{key}.cutmix_alpha' must be 0 (off) or more")

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @classmethod
    def strong(cls) -> "AugmentConfig":
        """The heavier noise a noisy-student student trains under."""
        return cls(hflip=0.5, rotate_deg=12.0, scale=(0.8, 1.2), translate=0.1, brightness=0.2, contrast=0.3,
                   noise_std=0.05)


class RadiographAugment:
    """Random affine + exposure jitter on a normalized [C, H, W] tensor, then timm's policy and random erasing
    when configured (they need the ``mean`` / ``std`` the tensor was normalized with)."""

    def __init__(self, cfg: AugmentConfig, mean: tuple[float, ...] = (0.485, 0.456, 0.406),
                 std: tuple[float, ...] = (0.229, 0.224, 0.225), image_size: int = 128):
        self.cfg = cfg
        self.policy = None if cfg.policy == "none" else PolicyOnTensor(policy_transform(cfg.policy, image_size),
                                                                       mean, std)
        self.erasing = random_erasing(cfg.random_erasing, cfg.random_erasing_mode)

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        c = self.cfg
        if not c.enabled:
            return image
        # Draw every parameter unconditionally so the random stream does not depend on the config's branches.
        flip, angle, scale = rng.random(), rng.uniform(-c.rotate_deg, c.rotate_deg), rng.uniform(*c.scale)
        tx, ty = rng.uniform(-c.translate, c.translate, size=2) * image.shape[-1]
        brightness, contrast = rng.uniform(-c.brightness, c.brightness), rng.uniform(1 - c.contrast, 1 + c.contrast)
        noise_seed, timm_seed = int(rng.integers(2**31)), int(rng.integers(2**31))
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
        if self.policy is not None or self.erasing is not None:
            with seeded_globals(timm_seed):
                image = self.policy(image) if self.policy is not None else image
                image = self.erasing(image.clone()) if self.erasing is not None else image
        return image


def sample_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, row])


class AugmentedDataset(SharedEpochDataset, torch.utils.data.Dataset):
    """Wraps an image dataset and augments each sample with its (seed, epoch, row) generator.

    A skipped-image marker (``skip_bad_images``: a row and an error, no image) passes through unchanged, so
    the collate function drops and counts it as it does for predict and the feature store.

    ``sizes_by_epoch``: progressive resolution -- epoch e (from 0) trains at ``sizes_by_epoch[e]`` pixels (the
    image read at the full size, resized with antialiasing); epochs past the list keep the full size.
    """

    def __init__(self, base, augment: RadiographAugment, seed: int, sizes_by_epoch: list[int] | None = None):
        self.base, self.augment, self.seed, self._epoch = base, augment, seed, SharedEpoch()
        self.sizes_by_epoch = list(sizes_by_epoch or [])

    def image_size(self, epoch: int) -> int | None:
        """The side the images of ``epoch`` are trained at; None: as read."""
        return self.sizes_by_epoch[epoch] if epoch < len(self.sizes_by_epoch) else None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        if not is_skipped(item):
            epoch, image = self.epoch, item["image"]
            size = self.image_size(epoch)
            if size is not None and tuple(image.shape[-2:]) != (size, size):
                image = TF.resize(image, [size, size], antialias=True)
            item["image"] = self.augment(image, sample_rng(self.seed, epoch, int(item["row"])))
        return item
