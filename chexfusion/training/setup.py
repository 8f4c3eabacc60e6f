"""The ``accelerate`` set-up, seeding and experiment trackers: what every run does before its first step."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .config import TRACKERS, OptimConfig
from .fast_paths import loader_options


def make_accelerator(cfg: OptimConfig, run_dir: Path | None = None):
    """An ``accelerate.Accelerator`` for CPU, one GPU or many processes, chosen at launch; with the configured
    trackers writing under ``run_dir/logs``."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "fp16" if (torch.cuda.is_available() and not cfg.cpu) else "no"
    # cpu=True on a machine without CUDA, so that a multi-process CPU launch (gloo) sets up the process group.
    cpu = cfg.cpu or not torch.cuda.is_available()
    trackers = tracker_names(cfg.log_with)
    project = None
    if trackers and run_dir is not None:
        project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(Path(run_dir) / "logs"))
    # dispatch_batches off: every process iterates its own loader. It is already off for map-style datasets;
    # for a streamed split (an IterableDataset) accelerate would otherwise read on process 0 alone and concatenate
    # the processes' batches, which fails for batches padded to different numbers of images.
    # non_blocking: batches in pinned memory (train.pin_memory, CUDA only) are copied to the GPU asynchronously
    loader_config = DataLoaderConfiguration(dispatch_batches=False, non_blocking=loader_options(cfg)["pin_memory"])
    return Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                       dataloader_config=loader_config,
                       log_with=trackers or None, project_config=project)


def end_processes() -> None:
    """Leave the process group of a multi-process launch, if this process joined one.

    Called once a command has finished on every rank. Without it gloo's worker threads are still alive when the
    interpreter tears down, and the process can abort at exit (SIGABRT, "terminate called without an active
    exception") after its work is done, which fails the launch (pytorch/pytorch#190489). Not called after an
    error: destroying a group while another rank may still be in a collective can hang.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def tracker_names(log_with: str) -> list[str]:
    """``train.log_with`` as accelerate tracker names; a tracker whose package is missing is a one-line error."""
    import importlib.util

    names = [n.strip() for n in str(log_with).split(",") if n.strip() and n.strip() != "none"]
    names = list(TRACKERS) if names == ["all"] else names
    packages = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"config key 'train.log_with': unknown tracker '{name}' (none, {', '.join(TRACKERS)}, "
                            "all, or a comma-separated list)")
        if importlib.util.find_spec(packages[name]) is None:
            raise UserError(f"config key 'train.log_with': {name} is not installed (pip install {packages[name]}), "
                            "or set train.log_with=none")
    return names


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_batch(seed: int, epoch: int, batch_index: int, process_index: int) -> None:
    """Seed torch's global generator (CPU and CUDA) for one training batch from where the batch is, not from
    what ran before it: the same masks after a resume, different masks on each process."""
    derived = np.random.SeedSequence([seed % 2**32, epoch, batch_index, process_index]).generate_state(1)[0]
    torch.manual_seed(int(derived))
