"""The optimisation settings (``train.*``) both stages share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError

TRACKERS = ("tensorboard", "wandb", "mlflow")
CHOICES = {"schedule": ("cosine", "onecycle"), "select_on": ("mAP", "loss"), "optimizer": ("adamw", "adam")}


@dataclass
class OptimConfig:
    """Optimisation settings shared by both stages."""

    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 1.0  # stage 1: backbone block i of L learns at lr * layer_decay ** (L - i) (BEiT); 1.0 = off
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    schedule: str = "cosine"  # cosine (warm-up + cosine) | onecycle (torch OneCycleLR, rising for warmup_epochs)
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 weight decay, as seed 004)
    select_on: str = "mAP"  # the kept weights: highest validation mAP | lowest validation loss
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0 = off
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: fp16 on CUDA, off on CPU
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999
    cpu: bool = False  # force CPU even when a GPU is present
    num_workers: int = 0
    # GPU fast paths (training/fast_paths.py); the defaults leave a CPU run's weights unchanged
    pin_memory: bool = True  # page-locked batches for an asynchronous copy to the GPU; only where CUDA is present
    persistent_workers: bool = False  # keep the DataLoader workers alive between epochs (num_workers > 0)
    channels_last: bool = False  # NHWC weights and inputs: faster convolutions on tensor-core GPUs
    compile: bool = False  # torch.compile the model (slow first steps; then faster on GPU)
    checkpoint_every_steps: int = 0  # 0 = checkpoint at each epoch end only
    max_steps_per_epoch: int = 0  # 0 = whole epoch (a smoke-test knob)
    # experiment tracking through accelerate: none, tensorboard, wandb, mlflow, all, or a comma list
    log_with: str = "none"

    def validate(self) -> None:
        """Every key in its range, checked when the config is loaded (before any run folder is made)."""
        at_least = {"epochs": 1, "batch_size": 1, "grad_accum": 1, "num_workers": 0, "checkpoint_every_steps": 0,
                    "max_steps_per_epoch": 0, "weight_decay": 0, "warmup_epochs": 0, "grad_clip": 0}
        for key, low in at_least.items():
            if getattr(self, key) < low:
                raise UserError(f"config key 'train.{key}' must be at least {low}, got {getattr(self, key)}")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"config key 'train.{key}' must be one of {', '.join(allowed)}, "
                                f"got '{getattr(self, key)}'")
        if self.schedule == "onecycle" and not 0 < self.warmup_epochs < self.epochs:
            raise UserError(f"config key 'train.warmup_epochs' is OneCycle's rising phase: it must lie strictly "
                            f"between 0 and train.epochs ({self.epochs}), got {self.warmup_epochs}")
        if not self.lr > 0:
            raise UserError(f"config key 'train.lr' must be above 0, got {self.lr}")
        if not 0 < self.layer_decay <= 1:
            raise UserError(f"config key 'train.layer_decay' must be in (0, 1], got {self.layer_decay}")
        for key, value in (("min_lr_ratio", self.min_lr_ratio), ("ema_decay", self.ema_decay)):
            if not 0 <= value < 1 + (key == "min_lr_ratio"):
                raise UserError(f"config key 'train.{key}' must be in [0, 1{']' if key == 'min_lr_ratio' else ')'}, "
                                f"got {value}")
