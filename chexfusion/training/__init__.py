"""Training, shared by both stages: the epoch loop, its optimisation and its resumable checkpoints.

Read ``loop.py`` top to bottom: a stage hands it a prepared model and loaders
(``optim.prepare_training``) and its two functions (the loss of a batch, the
validation of a model) as a :class:`~chexfusion.training.loop.StageJob`, and
the loop does the rest the same way for both.

- ``config.py``: the optimisation settings (``train.*``) of both stages;
- ``setup.py``: the ``accelerate`` set-up (CPU, one GPU, many processes), seeding, experiment trackers;
- ``sampler.py``: the deterministic epoch order;
- ``fast_paths.py``: channels_last, torch.compile, pinned memory, persistent workers (``train.*``, GPU options);
- ``optim.py``: AdamW / Adam parameter groups, the cosine or OneCycle schedule, EMA, ``prepare_training``;
- ``checkpoint.py``: the resumable checkpoint and ``history.jsonl``;
- ``run_config.py``: refusing to resume a run folder made with another config;
- ``loop.py``: ``fit`` and ``finish_run``.

Determinism and resume: the data order of epoch ``e`` is a permutation drawn
from ``(seed, e)``, augmentations draw from ``(seed, e, row)``, dropout from
``(seed, e, batch, process)``, and the checkpoint holds model, optimizer,
scheduler, EMA and every RNG state. A run killed at any point and re-run from
its last checkpoint ends with the same weights as an uninterrupted run on CPU.
"""

from .checkpoint import Progress, append_jsonl, find_checkpoint, load_checkpoint, save_checkpoint
from .config import OptimConfig
from .fast_paths import apply_model_fast_paths, loader_options
from .loop import (
           HEADLINE,
           FitState,
           StageJob,
           finish_run,
           fit,
           selection_score,
           start_run,
           summary_line,
           validation_loss,
)
from .optim import (
           Prepared,
           cosine_schedule,
           make_ema,
           no_weight_decay_names,
           onecycle_schedule,
           param_groups,
           prepare_training,
           schedule_for,
)
from .run_config import EXECUTION_ONLY_KEYS, check_same_config
from .sampler import EpochPermutationSampler
from .setup import end_processes, make_accelerator, seed_batch, seed_everything

__all__ = ["OptimConfig", "end_processes", "make_accelerator", "seed_everything", "seed_batch",
           "EpochPermutationSampler", "param_groups", "no_weight_decay_names", "cosine_schedule", "schedule_for",
           "make_ema", "Prepared",
           "prepare_training", "Progress", "save_checkpoint", "find_checkpoint", "load_checkpoint", "append_jsonl",
           "check_same_config", "EXECUTION_ONLY_KEYS", "start_run", "StageJob", "fit", "FitState", "finish_run",
           "summary_line", "HEADLINE", "apply_model_fast_paths", "loader_options", "onecycle_schedule",
           "selection_score", "validation_loss"]
