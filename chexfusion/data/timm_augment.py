"""timm's RandAugment / AutoAugment and random erasing, made reproducible from (seed, epoch, row).

timm's transforms draw from the process-wide ``random``, ``numpy.random`` and ``torch`` generators, so on their
own an augmented image would depend on what the process drew before (the worker count, a resume). Each call
here seeds those three generators from the sample's own generator and restores them afterwards
(:func:`seeded_globals`), which keeps the project's contract: the image of row r in epoch e is the same
whatever the loader, and the rest of the process does not notice.

The policies work on 8-bit PIL images: a radiograph (a normalized tensor whose channels repeat one gray
image) goes in as one ``L`` image and comes back replicated and normalized again. Random erasing works on the
normalized tensor, as timm intends (``const`` fills with 0, the dataset mean).
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import UserError

AUTO_AUGMENT_POLICIES = ("original", "originalr", "v0", "v0r", "3a")
ERASING_MODES = ("const", "rand", "pixel")


@contextmanager
def seeded_globals(seed: int):
    """Run a block with ``random``, ``numpy.random`` and torch's CPU generator seeded from ``seed``, restoring
    the three states afterwards."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def policy_transform(spec: str, image_size: int):
    """timm's transform for ``augment.policy``: ``rand-...`` is RandAugment (``rand-m9-mstd0.5``), a name of
    ``AUTO_AUGMENT_POLICIES`` (optionally ``-mstd0.5``) is AutoAugment; anything else is a one-line error.
    Shifts are scaled to the image size and exposed borders filled black, as outside a radiograph."""
    from timm.data.auto_augment import auto_augment_transform, rand_augment_transform

    hparams = {"translate_const": int(image_size * 0.45), "img_mean": 0}
    name = spec.split("-")[0]
    try:
        if name == "rand":
            return rand_augment_transform(spec, hparams)
        if name in AUTO_AUGMENT_POLICIES:
            return auto_augment_transform(spec, hparams)
    except (AssertionError, KeyError, ValueError) as exc:
        raise UserError(f"config key 'augment.policy': timm cannot read '{spec}' ({exc or 'bad section'})") from None
    raise UserError(f"config key 'augment.policy' must be none, a RandAugment spec (rand-m9-mstd0.5) or an "
                    f"AutoAugment policy ({', '.join(AUTO_AUGMENT_POLICIES)}), got '{spec}'")


def random_erasing(probability: float, mode: str):
    """timm's RandomErasing on CPU tensors, or None when ``probability`` is 0."""
    if probability <= 0:
        return None
    if mode not in ERASING_MODES:
        raise UserError(f"config key 'augment.random_erasing_mode' must be one of {', '.join(ERASING_MODES)}, "
                        f"got '{mode}'")
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability=probability, mode=mode, device="cpu")


class PolicyOnTensor:
    """Applies a PIL policy to a normalized radiograph tensor [C, H, W] (channels = one gray image)."""

    def __init__(self, transform, mean: tuple[float, ...], std: tuple[float, ...]):
        self.transform = transform
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        gray = (image[:1] * self.std[:1] + self.mean[:1]).clamp(0, 1)[0]
        pil = Image.fromarray((gray.numpy() * 255).round().astype(np.uint8), mode="L")
        out = torch.from_numpy(np.asarray(self.transform(pil), dtype=np.float32) / 255.0)
        return (out.expand(image.shape[0], -1, -1) - self.mean) / self.std
