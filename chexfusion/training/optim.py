"""AdamW (or Adam) with its parameter groups, the cosine or OneCycle schedule, EMA, and ``prepare_training``
(the same for both stages)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .config import OptimConfig
from .fast_paths import apply_model_fast_paths


def no_weight_decay_names(model: torch.nn.Module) -> set[str]:
    """Full names of the parameters the modules exempt from weight decay by timm's convention: any submodule may
    define ``no_weight_decay()`` returning the names (relative to itself) of its embeddings and queries."""
    names = set()
    for prefix, module in model.named_modules():
        exempt = getattr(module, "no_weight_decay", None)
        if callable(exempt):
            names.update(f"{prefix}.{name}" if prefix else name for name in exempt())
    return names


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, text_map_lr_scale: float = 1.0,
                 layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms (1-D tensors) and on what the modules exempt
    (:func:`no_weight_decay_names`); the maps a text-query decoder shares between all classes (its
    ``text_map_parameters()``) learn at ``lr * text_map_lr_scale``. The first group is the decayed weights at
    ``lr``. ``layer_decay`` < 1 (BEiT's layer-wise decay, :func:`layer_scales`) also splits them by backbone
    depth; 1.0 gives exactly the groups above."""
    exempt = no_weight_decay_names(model)
    text_maps = {id(p) for m in model.modules() if hasattr(m, "text_map_parameters") for p in m.text_map_parameters()}
    scales = layer_scales(model, layer_decay) if layer_decay != 1.0 else {}
    groups: dict[tuple[bool, bool, float], list] = {(True, False, 1.0): [], (False, False, 1.0): [],
                                                    (True, True, 1.0): [], (False, True, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim <= 1 or name in exempt)
        groups.setdefault((decayed, id(p) in text_maps, scales.get(id(p), 1.0)), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0,
         "lr": lr * scale * (text_map_lr_scale if text_map else 1.0)}
        for (decayed, text_map, scale), params in groups.items()
        if params or (not text_map and scale == 1.0)
    ]


def layer_scales(model: torch.nn.Module, layer_decay: float) -> dict[int, float]:
    """``{id(parameter): lr scale}`` of the backbone's parameters: depth d of L groups (the encoder's
    ``layer_ids()``, :mod:`chexfusion.models.layer_groups`) learns at ``layer_decay ** (L - d)``, as timm's
    ``param_groups_layer_decay`` with the head one group above the backbone (at ``lr``)."""
    backbone = next((m for m in model.modules() if hasattr(m, "layer_ids")), None)
    if backbone is None:
        raise UserError("train.layer_decay applies to a stage-1 backbone (its blocks learn slower the nearer the "
                        "input); this model has none: set train.layer_decay=1.0")
    depths = backbone.layer_ids()
    top = max(depths.values()) + 1
    parameters = dict(backbone.named_parameters())
    return {id(parameters[name]): layer_decay ** (top - depth) for name, depth in depths.items() if name in parameters}


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


def onecycle_schedule(optimizer, total_steps: int, warmup_steps: int, calls_per_step: int = 1):
    """torch's OneCycleLR (Smith 2018, as seed 004): each group rises from its lr / 25 to its lr over
    ``warmup_steps`` and anneals (cosine) to lr / 25e4, with Adam's beta1 cycled 0.95 -> 0.85 -> 0.95.
    Counted in scheduler calls (``calls_per_step`` per optimizer step, as :func:`cosine_schedule`)."""
    peaks = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps * calls_per_step,
                                               pct_start=warmup_steps / total_steps)


def schedule_for(accelerator, optimizer, cfg: OptimConfig, steps_per_epoch: int):
    """``train.schedule`` in optimizer steps; accelerate steps a prepared scheduler once per process per step."""
    if cfg.schedule == "onecycle":
        total = steps_per_epoch * cfg.epochs
        return onecycle_schedule(optimizer, total, max(1, min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))),
                                 calls_per_step=accelerator.num_processes)
    return cosine_schedule(optimizer, steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch),
                           cfg.min_lr_ratio, calls_per_step=accelerator.num_processes)


def make_ema(model: torch.nn.Module, decay: float):
    """timm's EMA of all weights and buffers, or None when ``decay`` is 0."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


@dataclass
class Prepared:
    """Everything the loop trains with, after ``accelerator.prepare``."""

    model: object
    optimizer: object
    scheduler: object
    ema: object
    train_loader: object
    val_loader: object
    steps_per_epoch: int

    @property
    def eval_model(self):
        """What is validated, kept and evaluated: the EMA weights when EMA is on, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model


def text_lr_scale(model_cfg) -> float:
    """The learning-rate fraction of the text parameters (``text_map_parameters()``): the stages' shared text maps
    (``model.text.map_lr_scale``), a clip run's pretrained text tower (``model.text_lr_scale``)."""
    if hasattr(model_cfg, "text_lr_scale"):
        return float(model_cfg.text_lr_scale)
    return float(model_cfg.text.map_lr_scale)


def prepare_training(accelerator, stage_cfg, model, loaders: tuple, run_dir: Path, n_train: int,
                     unit: str) -> Prepared:
    """AdamW / Adam, the cosine / OneCycle schedule, EMA, the saved config and ``accelerator.prepare``: the same
    for both stages.

    ``loaders``: (train, validation). ``n_train``/``unit`` only word the error for a batch larger than the split.
    """
    from ..config import save_config
    from .setup import tracker_names

    cfg = stage_cfg.train
    train_loader, val_loader = loaders
    model = apply_model_fast_paths(model, cfg)  # before EMA copies it and accelerate wraps it
    groups = param_groups(model, cfg.weight_decay, cfg.lr, text_lr_scale(stage_cfg.model), cfg.layer_decay)
    optimizer = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW)(groups, lr=cfg.lr)
    steps_per_epoch = len(train_loader) // (cfg.grad_accum * accelerator.num_processes)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise UserError(f"train.batch_size {cfg.batch_size} x {accelerator.num_processes} processes is larger "
                        f"than the {n_train} training {unit}")
    scheduler = schedule_for(accelerator, optimizer, cfg, steps_per_epoch)
    ema = make_ema(model, cfg.ema_decay)
    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_config(stage_cfg, run_dir / "config.yaml")
    if tracker_names(cfg.log_with):
        from ..config import to_dict

        accelerator.init_trackers(run_dir.name, config=_scalar_config(to_dict(stage_cfg)))
    if getattr(train_loader.dataset, "shards_by_process", False):  # reads its own share: not sliced again
        model, optimizer, val_loader, scheduler = accelerator.prepare(model, optimizer, val_loader, scheduler)
    else:
        model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
            model, optimizer, train_loader, val_loader, scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    return Prepared(model, optimizer, scheduler, ema, train_loader, val_loader, steps_per_epoch)


def _scalar_config(cfg: dict, prefix: str = "") -> dict:
    """The resolved config flattened to dotted keys with scalar values, as trackers' hyper-parameter tables want."""
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_scalar_config(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
