"""The epoch loop both stages share: train, validate, keep the best, checkpoint, resume.

A stage hands over its prepared model and loaders (``optim.prepare_training``)
and a :class:`StageJob` -- the loss of a batch and the validation of a model --
and ``fit`` does the rest the same way for both: gradient accumulation and
mixed precision through ``accelerate``, EMA, a progress bar, ``history.jsonl``
(and the configured trackers), the best weights in ``model.safetensors``
(selected on validation mAP, or the lowest validation loss: ``train.select_on``),
and a checkpoint at each epoch end (and every ``checkpoint_every_steps``) from
which a killed run resumes to the same result.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..io import atomic_write_json
from ..metrics import json_safe
from ..model_card import write_model_card
from ..run_folder import load_weights, save_weights
from . import checkpoint as ckpt
from .config import OptimConfig
from .optim import Prepared
from .setup import seed_batch

HEADLINE = ("mAP", "mAUROC", "head_mAP", "medium_mAP", "tail_mAP")


def summary_line(metrics: dict) -> str:
    """The headline metrics on one line; mAP with its chance level (the mean prevalence of the scored classes)."""
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    parts = [f"{k} {fmt(metrics.get(k))}" for k in HEADLINE]
    if metrics.get("chance_mAP") is not None:
        parts[HEADLINE.index("mAP")] += f" (chance {fmt(metrics['chance_mAP'])})"
    return "  ".join(parts)


def start_run(cfg, label: str):
    """What every stage does first: accelerate, seeds, and its run folder checked against the config.

    Returns ``(accelerator, run_dir, results)``: ``results`` is the finished run's metrics (nothing to train) or
    None. A folder made with another config is refused (``run_config.check_same_config``).
    """
    from ..config import to_dict
    from ..io import check_output_folder
    from .run_config import check_same_config
    from .setup import make_accelerator, seed_everything

    run_dir = check_output_folder(Path(cfg.output_dir) / cfg.name, "the run folder (output_dir/name)")
    accelerator = make_accelerator(cfg.train, run_dir)
    seed_everything(cfg.seed)
    check_same_config(run_dir, to_dict(cfg), defaults=to_dict(type(cfg)()))
    if not (run_dir / "metrics.json").is_file():
        return accelerator, run_dir, None
    results = json.loads((run_dir / "metrics.json").read_text())
    accelerator.print(f"{label} run {run_dir} is complete (delete the folder to train it again)")
    accelerator.print(f"{label} validation: {summary_line(results['validation'])}")
    return accelerator, run_dir, results


@dataclass
class StageJob:
    """What a stage gives the loop besides the prepared model.

    ``batch_loss(model, batch) -> loss`` (None for a batch with nothing to learn from); ``validate(model) ->
    metrics``; ``epoch_setters``: the samplers / datasets whose ``set_epoch`` fixes each epoch's order and
    augmentations.
    """

    name: str  # stage1 / stage2: the progress bar's and the log's prefix
    run_dir: Path
    seed: int
    batch_loss: Callable
    validate: Callable
    epoch_setters: list = field(default_factory=list)


@dataclass
class FitState:
    """What a stage needs after training: where training ended and what it skipped."""

    progress: ckpt.Progress
    skipped_images: int


def after_optimizer_step(progress: ckpt.Progress) -> None:
    """Called after every optimizer step (the resume tests replace it to stop a process at an exact step)."""


def fit(accelerator, cfg: OptimConfig, prepared: Prepared, job: StageJob) -> FitState:
    """Train ``prepared.model`` for ``cfg.epochs``, resuming from ``job.run_dir/checkpoint``.

    Dropout and stochastic depth draw from a torch generator re-seeded from (seed, epoch, batch, process) at
    every batch: a resumed run draws the masks of an uninterrupted one (restoring one global RNG state is not
    enough -- building a DataLoader iterator draws from it too), and two processes draw different masks.
    """
    run_dir, log = job.run_dir, accelerator.print
    progress = _resume(accelerator, prepared, run_dir, job.name)
    skipped = 0
    for epoch in range(progress.epoch, cfg.epochs):
        started = time.time()
        skipped += _train_epoch(accelerator, cfg, prepared, job, progress, epoch)
        train_seconds = time.time() - started

        metrics = job.validate(prepared.eval_model)
        record = _epoch_record(epoch, progress, prepared, metrics, train_seconds, started)
        loss_text = "n/a" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
        log(f"{job.name} epoch {epoch + 1}: loss {loss_text}  validation {summary_line(metrics)}")
        progress.epoch, progress.step_in_epoch, progress.loss_sum, progress.loss_count = epoch + 1, 0, 0.0, 0
        score = selection_score(metrics, cfg.select_on)
        if score > progress.best_score or progress.best_epoch < 0:
            progress.best_score, progress.best_epoch = score, epoch + 1
            if accelerator.is_main_process:
                save_weights(accelerator.unwrap_model(prepared.eval_model), run_dir / "model.safetensors")
        if accelerator.is_main_process:
            ckpt.append_jsonl(run_dir / "history.jsonl", json_safe(record))
        accelerator.log({f"{job.name}/{k}": v for k, v in record.items() if isinstance(v, (int, float))},
                        step=progress.global_step)
        _save(accelerator, run_dir, prepared, progress)

    # The best weights go back into the model that the stage evaluates at the end.
    accelerator.wait_for_everyone()
    load_weights(accelerator.unwrap_model(prepared.eval_model), run_dir / "model.safetensors")
    return FitState(progress, skipped)


def selection_score(metrics: dict, select_on: str) -> float:
    """What the best epoch maximises: validation mAP, or minus the validation loss (``metrics["loss"]``, which
    the stage's ``validate`` adds: :func:`validation_loss`); a missing figure ranks last."""
    value = metrics.get("mAP") if select_on == "mAP" else metrics.get("loss")
    if value is None or not math.isfinite(value):
        return -math.inf
    return value if select_on == "mAP" else -value


def validation_loss(loss_fn, probs, targets, mask) -> float:
    """The training loss of validation predictions given as probabilities (after any TTA: the loss of what is
    evaluated), on logits recovered from them; masked labels count as in training."""
    import numpy as np
    import torch

    p = torch.from_numpy(np.asarray(probs, dtype=np.float64)).clamp(1e-7, 1 - 1e-7)
    with torch.no_grad():
        return float(loss_fn(torch.logit(p).float(), torch.as_tensor(np.asarray(targets), dtype=torch.float32),
                             torch.as_tensor(np.asarray(mask), dtype=torch.float32)))


def _resume(accelerator, prepared: Prepared, run_dir: Path, stage: str) -> ckpt.Progress:
    progress = ckpt.Progress()
    found = ckpt.find_checkpoint(run_dir / "checkpoint")
    if found is not None:
        progress = ckpt.load_checkpoint(found, accelerator.unwrap_model(prepared.model), prepared.optimizer,
                                        prepared.scheduler, prepared.ema)
        accelerator.print(f"{stage}: resuming {run_dir} at epoch {progress.epoch + 1}, step {progress.step_in_epoch}")
    if accelerator.is_main_process:
        ckpt.truncate_history(run_dir / "history.jsonl", progress.epoch)
    return progress


def _train_epoch(accelerator, cfg: OptimConfig, prepared: Prepared, job: StageJob, progress: ckpt.Progress,
                 epoch: int) -> int:
    """One epoch (or what is left of it after a resume); returns the images it skipped."""
    from ..progress import tqdm

    model, optimizer, scheduler = prepared.model, prepared.optimizer, prepared.scheduler
    model.train()
    if hasattr(prepared.train_loader, "set_epoch"):
        # accelerate's loader re-sets its sampler's epoch from its own counter, which counts only loops run to
        # the end (not one cut short by max_steps_per_epoch, nor a resumed one): give it the true epoch
        prepared.train_loader.set_epoch(epoch)
    for obj in job.epoch_setters:
        obj.set_epoch(epoch)
    loader = prepared.train_loader
    if progress.step_in_epoch:
        loader = accelerator.skip_first_batches(loader, progress.step_in_epoch * cfg.grad_accum)
    bar = tqdm(total=prepared.steps_per_epoch, initial=progress.step_in_epoch,
               desc=f"{job.name} epoch {epoch + 1}/{cfg.epochs}", disable=not accelerator.is_local_main_process)
    skipped = 0
    for batch_index, batch in enumerate(loader, start=progress.step_in_epoch * cfg.grad_accum):
        if progress.step_in_epoch >= prepared.steps_per_epoch:
            break
        skipped += len(batch.get("skipped", []))
        seed_batch(job.seed, epoch, batch_index, accelerator.process_index)
        with accelerator.accumulate(model):
            loss = job.batch_loss(model, batch)
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
        if prepared.ema is not None:
            prepared.ema.update(accelerator.unwrap_model(model), step=progress.global_step)
        progress.loss_sum, progress.loss_count = progress.loss_sum + loss.item(), progress.loss_count + 1
        progress.step_in_epoch += 1
        progress.global_step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if (cfg.checkpoint_every_steps and progress.step_in_epoch % cfg.checkpoint_every_steps == 0
                and progress.step_in_epoch < prepared.steps_per_epoch):
            _save(accelerator, job.run_dir, prepared, progress)
        after_optimizer_step(progress)
    bar.close()
    return skipped


def _epoch_record(epoch: int, progress: ckpt.Progress, prepared: Prepared, metrics: dict, train_seconds: float,
                  started: float) -> dict:
    mean_loss = progress.loss_sum / progress.loss_count if progress.loss_count else None
    return {"epoch": epoch + 1, "train_loss": mean_loss, "lr": prepared.scheduler.get_last_lr()[0],
            "train_seconds": round(train_seconds, 2), "seconds": round(time.time() - started, 2),
            **{k: metrics.get(k) for k in HEADLINE}, **({"val_loss": metrics["loss"]} if "loss" in metrics else {})}


def _save(accelerator, run_dir: Path, prepared: Prepared, progress: ckpt.Progress) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.save_checkpoint(run_dir / "checkpoint", accelerator.unwrap_model(prepared.model), prepared.optimizer,
                             prepared.scheduler, prepared.ema, progress)
    accelerator.wait_for_everyone()


def finish_run(accelerator, run_dir: Path, results: dict, write_info: Callable[[], None]) -> None:
    """Write run.json and metrics.json (the mark of a finished run), then drop the resume checkpoint."""
    if accelerator.is_main_process:
        write_info()
        atomic_write_json(run_dir / "metrics.json", json_safe(results))
        write_model_card(run_dir)  # config.json + README.md: the folder is a Hugging Face model repository
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    for tracker in accelerator.trackers:  # close the trackers' writers; the process group stays for the caller
        tracker.finish()
    accelerator.wait_for_everyone()
