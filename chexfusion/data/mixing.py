"""MixUp / CutMix of a training batch with multi-label targets and label masks (timm's ``Mixup``).

timm mixes dense multi-label targets (``multi_label=True``) as ``lam * y + (1 - lam) * y.flip(0)``. A label
mask (1 = the label is known) must follow the same pairs: a mixed label is known only where both partners'
labels are, and an unmixed sample (lam = 1) keeps its own mask. So the masks go through the very same call,
concatenated to the targets: the mixed mask is ``lam * m + (1 - lam) * m'``, which is 1 exactly where the
sample's own mask is 1 and either lam = 1 or the partner's is 1 too. Label smoothing is off (timm would pull
every label towards 0.5, which a long-tailed loss with class weights should not get unasked).

timm draws lam and the boxes from ``numpy.random``; :meth:`BatchMixer.__call__` takes a seed, which the stage
draws from torch's generator (seeded per batch from (seed, epoch, batch, process), ``training.seed_batch``), so
a resumed run mixes as an uninterrupted one.
"""

from __future__ import annotations

import torch

from .augment import AugmentConfig
from .timm_augment import seeded_globals


class BatchMixer:
    """``(images, targets, masks, seed) -> mixed (images, targets, masks)`` under ``augment.mixup_*``."""

    def __init__(self, cfg: AugmentConfig, num_classes: int):
        from timm.data import Mixup

        self.num_classes = num_classes
        self.mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mixup_prob,
                           switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=0.0,
                           num_classes=2 * num_classes, multi_label=True)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, seed: int):
        """timm pairs the samples of a batch, so an odd batch (an unreadable image skipped from an even one) keeps
        its last sample unmixed."""
        n = len(images) - len(images) % 2
        if n == 0:
            return images, targets, masks
        both = torch.cat([targets.float(), masks.float()], dim=1)
        with seeded_globals(seed):
            mixed_images, mixed = self.mixup(images[:n].clone(), both[:n])
        mixed_masks = (mixed[:, self.num_classes:] > 1.0 - 1e-6).to(masks.dtype)
        return (torch.cat([mixed_images, images[n:]]), torch.cat([mixed[:, : self.num_classes], targets[n:].float()]),
                torch.cat([mixed_masks, masks[n:]]))


def batch_mixer(cfg: AugmentConfig, num_classes: int) -> BatchMixer | None:
    """A mixer when MixUp or CutMix is on, else None."""
    return BatchMixer(cfg, num_classes) if cfg.mixes else None


def mix_batch(mixer: BatchMixer | None, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch's (image, target, mask), mixed when a mixer is given; the seed comes from torch's
    per-batch generator state."""
    if mixer is None:
        return batch["image"], batch["target"], batch["mask"]
    seed = int(torch.randint(2**31 - 1, (1,)))
    return mixer(batch["image"], batch["target"], batch["mask"], seed)
