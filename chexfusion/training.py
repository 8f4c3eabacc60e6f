"""Pieces shared by the stage-1 and stage-2 training loops.

Both loops read top to bottom (see ``stage1/train.py``); what they share lives
here: the accelerate set-up, AdamW with a cosine schedule and warm-up, a
deterministic epoch sampler, EMA, and the resumable checkpoint.

Determinism and resume: the data order of epoch ``e`` is a permutation drawn
from ``(seed, e)``, augmentations draw from ``(seed, e, row)``, and the
checkpoint holds model, optimizer, scheduler, EMA and every RNG state. A run
killed at any point and re-run from its last checkpoint therefore ends with the
same weights as an uninterrupted run on CPU. Checkpoints are safetensors for
weights plus a ``torch.load(weights_only=True)``-safe file for the rest: nothing
is ever unpickled.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import save_file

from .errors import UserError
from .run_folder import state_dict_for_file, load_weights


@dataclass
class OptimConfig:
    """Optimisation settings shared by both stages."""

    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0 = off
    mixed_precision: str = "auto"  # auto (fp16 on CUDA, off on CPU) | no | fp16 | bf16
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999
    cpu: bool = False  # force CPU even when a GPU is present
    num_workers: int = 0
    checkpoint_every_steps: int = 0  # 0 = checkpoint at each epoch end only
    max_steps_per_epoch: int = 0  # 0 = whole epoch (a smoke-test knob)


def make_accelerator(cfg: OptimConfig):
    """An ``accelerate.Accelerator`` for CPU, one GPU or many processes, chosen at launch."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "fp16" if (torch.cuda.is_available() and not cfg.cpu) else "no"
    if precision not in ("no", "fp16", "bf16"):
        raise UserError(f"config key 'train.mixed_precision' must be auto, no, fp16 or bf16, got '{precision}'")
    # cpu=True on a machine without CUDA, so that a multi-process CPU launch (gloo) sets up the process group.
    cpu = cfg.cpu or not torch.cuda.is_available()
    # dispatch_batches off: every process iterates its own loader. It is already off for map-style datasets;
    # for a streamed split (an IterableDataset) accelerate would otherwise read on process 0 alone and concatenate
    # the processes' batches, which fails for batches padded to different numbers of images.
    return Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                       dataloader_config=DataLoaderConfiguration(dispatch_batches=False))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_batch(seed: int, epoch: int, batch_index: int, process_index: int) -> None:
    """Seed torch's global generator (CPU and CUDA) for one training batch from where the batch is, not from
    what ran before it: the same masks after a resume, different masks on each process."""
    derived = np.random.SeedSequence([seed % 2**32, epoch, batch_index, process_index]).generate_state(1)[0]
    torch.manual_seed(int(derived))


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


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, text_map_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, embeddings and queries (1-D tensors and *_embed / query
    params); the shared text maps of a text-query decoder (``MLDecoder.text_map_parameters``) learn at
    ``lr * text_map_lr_scale``. The first group is the decayed weights at ``lr``."""
    from .models.ml_decoder import MLDecoder

    text_maps = {id(p) for m in model.modules() if isinstance(m, MLDecoder) for p in m.text_map_parameters()}
    groups: dict[tuple[bool, bool], list] = {(True, False): [], (False, False): [], (True, True): [], (False, True): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim <= 1 or "embed" in name or "query" in name)
        groups[(decayed, id(p) in text_maps)].append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0,
         "lr": lr * text_map_lr_scale if text_map else lr}
        for (decayed, text_map), params in groups.items()
        if params or not text_map
    ]


def cosine_schedule(optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float, calls_per_step: int = 1):
    """Linear warm-up then cosine decay to ``min_lr_ratio`` of the peak, counted in optimizer steps.

    ``calls_per_step``: how often the scheduler is stepped per optimizer step (accelerate steps a prepared
    scheduler once per process), so the rate of optimizer step k is the same for any process count.
    """

    def factor(call: int) -> float:
        step = call // calls_per_step
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_ema(model: torch.nn.Module, decay: float):
    """timm's EMA of all weights and buffers, or None when ``decay`` is 0."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


# ---- checkpoints -------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_gauss"][0], state["numpy_gauss"][1]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Where training stands: the next epoch to run and the optimizer steps already taken inside it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    loss_sum: float = 0.0  # the epoch's training loss so far: a resumed epoch reports the loss of all its steps
    loss_count: int = 0


def save_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, ema, progress: Progress) -> None:
    """Write the resume checkpoint to a temporary folder and swap it in, so a kill never leaves half of one."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(state_dict_for_file(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(state_dict_for_file(ema.module), str(tmp / "ema.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps(progress.__dict__))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    if old.exists():
        shutil.rmtree(old)


def find_checkpoint(ckpt_dir: Path) -> Path | None:
    """The last complete checkpoint, also when a kill fell between the two renames of save_checkpoint."""
    for candidate in (Path(ckpt_dir), Path(ckpt_dir).with_name(Path(ckpt_dir).name + ".old")):
        if (candidate / "progress.json").is_file():
            return candidate
    return None


def load_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, ema) -> Progress:
    advice = f"delete {ckpt_dir} to train this run from the start"
    load_weights(model, ckpt_dir / "model.safetensors", advice)
    if ema is not None and (ckpt_dir / "ema.safetensors").is_file():
        load_weights(ema.module, ckpt_dir / "ema.safetensors", advice)
    state = torch.load(ckpt_dir / "state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return Progress(**json.loads((ckpt_dir / "progress.json").read_text()))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


# Settings that change how a run is executed but not what it computes: a run may resume with other values.
EXECUTION_ONLY_KEYS = {"train.num_workers", "train.checkpoint_every_steps", "train.cpu"}

# Keys whose default is not what chexfusion did before the key existed: a run whose config.yaml lacks one was
# trained with this value (text-query maps learned at the full train.lr until map_lr_scale came, 2026-12).
BEFORE_KEY_EXISTED = {"model.text.map_lr_scale": 1.0}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.endswith("params"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_same_config(run_dir: Path, cfg_dict: dict, defaults: dict | None = None) -> None:
    """Refuse to resume or reuse a run folder that was made with a different configuration.

    A key the saved config lacks (added to chexfusion after the run was made) counts as its default in
    ``defaults``, so a newer version still recognises a run made before the key existed -- unless the run did
    something else then (``BEFORE_KEY_EXISTED``): such a run is refused, not taken for one with the new default.
    """
    import yaml

    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    current = _flatten(cfg_dict)
    for key, value in BEFORE_KEY_EXISTED.items():
        if key in current:
            saved.setdefault(key, value)
    for key, value in _flatten(defaults or {}).items():
        saved.setdefault(key, value)
    # model.text.* only matters to text queries: two learned-query configs are the same whatever they say.
    text_unused = saved.get("model.queries", "learned") == current.get("model.queries", "learned") == "learned"
    for key in sorted(set(saved) | set(current)):
        if key in EXECUTION_ONLY_KEYS or (text_unused and key.startswith("model.text.")):
            continue
        if saved.get(key) != current.get(key):
            raise UserError(f"run folder {run_dir} was made with {key}={saved.get(key)!r}, not {current.get(key)!r}: "
                            f"choose another name=... or delete the folder")
