"""The epoch loop both stages share: train, validate, keep the best, checkpoint, resume.

A stage hands over its prepared model, loaders and two functions -- the loss of
a batch and the validation of a model -- and ``fit`` does the rest the same way
for both: gradient accumulation and mixed precision through ``accelerate``,
EMA, a progress bar, ``history.jsonl``, the best weights in
``model.safetensors`` (selected on validation mAP), and a checkpoint at each
epoch end (and every ``checkpoint_every_steps``) from which a killed run resumes
to the same result.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import training
from .errors import UserError
from .metrics import json_safe

HEADLINE = ("mAP", "mAUROC", "head_mAP", "medium_mAP", "tail_mAP")


def summary_line(metrics: dict) -> str:
    """The headline metrics on one line; mAP with its chance level (the mean prevalence of the scored classes)."""
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    parts = [f"{k} {fmt(metrics.get(k))}" for k in HEADLINE]
    if metrics.get("chance_mAP") is not None:
        parts[HEADLINE.index("mAP")] += f" (chance {fmt(metrics['chance_mAP'])})"
    return "  ".join(parts)


@dataclass
class FitState:
    """What a stage needs after training: where training ended and what it skipped."""

    progress: training.Progress
    skipped_images: int


def fit(*, accelerator, cfg: training.OptimConfig, run_dir: Path, stage: str, model, optimizer, scheduler, ema,
        train_loader, steps_per_epoch: int, epoch_setters: list, batch_loss: Callable, validate: Callable,
        seed: int) -> FitState:
    """Train ``model`` (already ``accelerator.prepare``-d) for ``cfg.epochs``, resuming from ``run_dir/checkpoint``.

    ``batch_loss(model, batch) -> loss`` (None for a batch with nothing to learn from) and ``validate(model) -> metrics dict`` are the stage's own parts;
    ``epoch_setters`` are the samplers/datasets whose ``set_epoch`` fixes each epoch's order and augmentations.
    Dropout and stochastic depth draw from a torch generator re-seeded from (``seed``, epoch, batch, process) at
    every batch: a resumed run draws the masks of an uninterrupted one (restoring one global RNG state is not
    enough -- building a DataLoader iterator draws from it too), and two processes draw different masks.
    """
    log = accelerator.print
    ckpt_dir, history_path = run_dir / "checkpoint", run_dir / "history.jsonl"
    progress = training.Progress()
    found = training.find_checkpoint(ckpt_dir)
    if found is not None:
        progress = training.load_checkpoint(found, accelerator.unwrap_model(model), optimizer, scheduler, ema)
        log(f"{stage}: resuming {run_dir} at epoch {progress.epoch + 1}, step {progress.step_in_epoch}")
    if accelerator.is_main_process:
        _truncate_history(history_path, progress.epoch)

    skipped = 0
    for epoch in range(progress.epoch, cfg.epochs):
        model.train()
        if hasattr(train_loader, "set_epoch"):
            # accelerate's loader re-sets its sampler's epoch from its own counter, which counts only loops run to
            # the end (not one cut short by max_steps_per_epoch, nor a resumed one): give it the true epoch
            train_loader.set_epoch(epoch)
        for obj in epoch_setters:
            obj.set_epoch(epoch)
        loader = train_loader
        if progress.step_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, progress.step_in_epoch * cfg.grad_accum)
        started = time.time()
        bar = tqdm(total=steps_per_epoch, initial=progress.step_in_epoch, desc=f"{stage} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not accelerator.is_local_main_process)
        for batch_index, batch in enumerate(loader, start=progress.step_in_epoch * cfg.grad_accum):
            if progress.step_in_epoch >= steps_per_epoch:
                break
            skipped += len(batch.get("skipped", []))
            training.seed_batch(seed, epoch, batch_index, accelerator.process_index)
            with accelerator.accumulate(model):
                loss = batch_loss(model, batch)
                if loss is None:  # nothing to learn from in this batch
                    continue
                accelerator.backward(loss)
                if cfg.grad_clip and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=progress.global_step)
            progress.loss_sum, progress.loss_count = progress.loss_sum + loss.item(), progress.loss_count + 1
            progress.step_in_epoch += 1
            progress.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if (cfg.checkpoint_every_steps and progress.step_in_epoch % cfg.checkpoint_every_steps == 0
                    and progress.step_in_epoch < steps_per_epoch):
                _save(accelerator, ckpt_dir, model, optimizer, scheduler, ema, progress)
            _die_here_if_testing(progress.global_step)
        bar.close()
        train_seconds = time.time() - started

        eval_model = ema.module if ema is not None else model
        metrics = validate(eval_model)
        mean_loss = progress.loss_sum / progress.loss_count if progress.loss_count else None
        record = {"epoch": epoch + 1, "train_loss": mean_loss,
                  "lr": scheduler.get_last_lr()[0], "train_seconds": round(train_seconds, 2),
                  "seconds": round(time.time() - started, 2),
                  **{k: metrics.get(k) for k in HEADLINE}}
        loss_text = "n/a" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
        log(f"{stage} epoch {epoch + 1}: loss {loss_text}  validation {summary_line(metrics)}")
        progress.epoch, progress.step_in_epoch, progress.loss_sum, progress.loss_count = epoch + 1, 0, 0.0, 0
        score = metrics["mAP"] if metrics.get("mAP") is not None else -math.inf
        if score > progress.best_score or progress.best_epoch < 0:
            progress.best_score, progress.best_epoch = score, epoch + 1
            if accelerator.is_main_process:
                training.save_weights(accelerator.unwrap_model(eval_model), run_dir / "model.safetensors")
        if accelerator.is_main_process:
            training.append_jsonl(history_path, json_safe(record))
        _save(accelerator, ckpt_dir, model, optimizer, scheduler, ema, progress)

    # The best weights go back into the model that the stage evaluates at the end.
    accelerator.wait_for_everyone()
    best = accelerator.unwrap_model(ema.module if ema is not None else model)
    training.load_weights(best, run_dir / "model.safetensors")
    return FitState(progress, skipped)


def _die_here_if_testing(global_step: int) -> None:
    """Test hook: ``CHEXFUSION_TEST_KILL_AT_STEP=N`` ends the process like ``kill -9`` right after optimizer step N,
    so the resume tests interrupt training at an exact, repeatable point."""
    kill_at = os.environ.get("CHEXFUSION_TEST_KILL_AT_STEP")
    if kill_at and int(kill_at) == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


def _save(accelerator, ckpt_dir, model, optimizer, scheduler, ema, progress):
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        training.save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, scheduler, ema, progress)
    accelerator.wait_for_everyone()


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Keep only the epochs the checkpoint covers, so a resumed run logs each epoch once."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
    path.write_text("".join(ln + "\n" for ln in lines))


@dataclass
class Prepared:
    """Everything ``fit`` trains with, after ``accelerator.prepare``."""

    model: object
    optimizer: object
    scheduler: object
    ema: object
    train_loader: object
    val_loader: object
    steps_per_epoch: int


def prepare_training(accelerator, stage_cfg, model, train_loader, val_loader, run_dir: Path, n_train: int,
                     unit: str) -> Prepared:
    """AdamW, the cosine schedule, EMA, the saved config and ``accelerator.prepare``: the same for both stages."""
    from .config import save_config

    cfg = stage_cfg.train
    # only a text-query decoder has text maps, so the scale is a no-op for learned queries
    groups = training.param_groups(model, cfg.weight_decay, cfg.lr, stage_cfg.model.text.map_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    steps_per_epoch = len(train_loader) // (cfg.grad_accum * accelerator.num_processes)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise UserError(f"train.batch_size {cfg.batch_size} x {accelerator.num_processes} processes is larger "
                        f"than the {n_train} training {unit}")
    scheduler = schedule_for(accelerator, optimizer, cfg, steps_per_epoch)
    ema = training.make_ema(model, cfg.ema_decay)
    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_config(stage_cfg, run_dir / "config.yaml")
    if getattr(train_loader.dataset, "shards_by_process", False):  # reads its own share: not sliced again
        model, optimizer, val_loader, scheduler = accelerator.prepare(model, optimizer, val_loader, scheduler)
    else:
        model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
            model, optimizer, train_loader, val_loader, scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    return Prepared(model, optimizer, scheduler, ema, train_loader, val_loader, steps_per_epoch)


def schedule_for(accelerator, optimizer, cfg: training.OptimConfig, steps_per_epoch: int):
    """Cosine schedule in optimizer steps; accelerate steps a prepared scheduler once per process per step."""
    return training.cosine_schedule(optimizer, steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch),
                                    cfg.min_lr_ratio, calls_per_step=accelerator.num_processes)


def finish_run(accelerator, run_dir: Path, results: dict, write_info: Callable[[], None]) -> None:
    """Write run.json and metrics.json (the mark of a finished run), then drop the resume checkpoint."""
    import shutil

    from .io import atomic_write_json

    if accelerator.is_main_process:
        write_info()
        atomic_write_json(run_dir / "metrics.json", json_safe(results))
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    accelerator.wait_for_everyone()
