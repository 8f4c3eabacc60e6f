"""The stage-1 training loop, top to bottom.

read CSVs -> build model, loss, optimizer -> ``fit`` (train, validate with the
configured TTA views, keep the best, checkpoint, resume) -> evaluate the best weights on the
validation and test splits -> ``run.json`` + ``metrics.json``.

Everything device-related goes through ``accelerate``: the same code runs on a
laptop CPU, one GPU, or ``accelerate launch`` over many processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import training
from ..data.augment import AugmentedDataset, RadiographAugment
from ..data.cxr_lt import read_cxr_lt
from ..data.image_dataset import ImageDataset, collate_images
from ..data.images import Preprocess
from ..data.labels import LabelPolicy
from ..data.mixing import batch_mixer, mix_batch
from ..data.tta import parse_tta, tta_mean
from ..errors import UserError
from ..losses import build_loss
from ..metrics import compute_metrics
from ..models.encoders import check_stage1_normalisation
from ..progress import tqdm
from ..run_folder import load_weights
from ..training import StageJob, finish_run, fit, prepare_training, start_run, summary_line, validation_loss
from .config import Stage1Config
from .model import build_for_classes, write_run_info


def select_rows(table, views: str) -> np.ndarray:
    """Rows of the table a run trains on: all images, or one view for a per-view backbone."""
    if views == "all":
        return np.arange(len(table))
    return np.flatnonzero(table.frame["view"].to_numpy() == views)


def load_tables(cfg: Stage1Config):
    """Training and validation tables with one class list, minus the classes held out for zero-shot."""
    train = read_cxr_lt(cfg.data.train_csv, classes=cfg.data.classes, require_labels=True)
    unknown = [c for c in cfg.data.exclude_classes if c not in train.classes]
    if unknown:
        raise UserError(f"config key 'data.exclude_classes': class '{unknown[0]}' is not in {cfg.data.train_csv}")
    classes = [c for c in train.classes if c not in cfg.data.exclude_classes]
    if classes != train.classes:
        train = read_cxr_lt(cfg.data.train_csv, classes=classes, require_labels=True)
    val = read_cxr_lt(cfg.data.val_csv, classes=classes, require_labels=True)
    return train, val, classes


@torch.no_grad()
def predict_probs(model, loader, accelerator, tta, desc: str = "eval"):
    """Sigmoid probabilities and table rows for a loader (gathered over processes), averaged over the test-time
    views ``tta`` (``data.tta.parse_tta``: a tuple of views, or a bool for the flip)."""
    model.eval()
    views = parse_tta(tta) if isinstance(tta, bool) else tta
    probs, rows, skipped = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        skipped.extend(batch.get("skipped", []))
        if "image" not in batch:  # every image of this batch was unreadable (skip_bad_images)
            continue
        p = tta_mean(lambda images: torch.sigmoid(model(images).float()), batch["image"], views)
        p, r = accelerator.gather_for_metrics((p, batch["row"]))
        probs.append(p.cpu())
        rows.append(r.cpu())
    return torch.cat(probs).numpy(), torch.cat(rows).numpy(), skipped


class RowOffset(torch.utils.data.Dataset):
    """A second training set whose rows are shifted past the labelled table's, so that every image of the
    concatenation has its own augmentation stream (augmentations draw from (seed, epoch, row))."""

    def __init__(self, base, offset: int):
        self.base, self.offset = base, offset

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        if item is not None:
            item["row"] = int(item["row"]) + self.offset
        return item


def epoch_sampler(cfg: Stage1Config, labelled_targets: np.ndarray, size: int):
    """The training order: a seeded permutation, repeat-factor sampling over the labelled images (extra
    noisy-student rows, after them, are drawn once per epoch), or class-aware sampling (labelled images only)."""
    if cfg.sampling.method == "uniform":
        return training.EpochPermutationSampler(size, cfg.seed)
    from ..sampling import ClassAwareSampler, RepeatFactorSampler, repeat_factors

    if cfg.sampling.method == "class_aware":
        if size != len(labelled_targets):
            raise UserError("sampling.method class_aware draws from the labelled images' classes; it does not take "
                            "noisy-student pseudo-labelled images: use repeat_factor or uniform")
        return ClassAwareSampler(labelled_targets, cfg.seed)

    factors = np.ones(size)
    factors[: len(labelled_targets)] = repeat_factors(labelled_targets, cfg.sampling.threshold, cfg.sampling.max_repeat)
    return RepeatFactorSampler(factors, cfg.seed)


def make_loader(dataset, batch_size, sampler, num_workers, drop_last=False, **options):
    """``options``: more DataLoader arguments (``training.loader_options``: pinned memory, persistent workers)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate_images, drop_last=drop_last, **options)


def label_policy(cfg: Stage1Config) -> LabelPolicy:
    return LabelPolicy(uncertain=cfg.data.uncertain_label, blank=cfg.data.blank_label)


def image_set(cfg: Stage1Config, table, pre: Preprocess) -> ImageDataset:
    """The run's images of ``table`` (its view only, for a per-view backbone), preprocessed, not augmented."""
    return ImageDataset(table, cfg.data.image_root, pre, label_policy(cfg), skip_bad_images=cfg.data.skip_bad_images,
                        rows=select_rows(table, cfg.data.views))


def eval_loader(cfg: Stage1Config, table, pre: Preprocess) -> torch.utils.data.DataLoader:
    """Evaluation batches of ``table``'s images, in table order."""
    return make_loader(image_set(cfg, table, pre), cfg.train.batch_size, None, cfg.train.num_workers,
                       **training.loader_options(cfg.train))


@dataclass
class Stage1Data:
    """What a stage-1 run reads: its class list and training prevalence, the preprocessing, and the loaders
    (the training loader's ``dataset`` and ``sampler`` take the epoch)."""

    classes: list[str]
    prevalence: np.ndarray
    pre: Preprocess
    val_table: object
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader


def load_data(cfg: Stage1Config, extra_train=None) -> Stage1Data:
    """Tables, preprocessing and loaders of a run; ``extra_train`` images are appended to the training set."""
    policy = label_policy(cfg)
    train_table, val_table, classes = load_tables(cfg)
    pre = Preprocess(image_size=cfg.data.image_size, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std),
                     intensity=cfg.data.intensity)
    check_stage1_normalisation(cfg.model.backbone, pre.mean, pre.std)
    train_rows, val_rows = select_rows(train_table, cfg.data.views), select_rows(val_table, cfg.data.views)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise UserError(f"no {cfg.data.views} images in {cfg.data.train_csv} or {cfg.data.val_csv}")
    labelled = image_set(cfg, train_table, pre)
    if extra_train is not None:
        labelled = torch.utils.data.ConcatDataset([labelled, RowOffset(extra_train, len(train_table))])
    augment = RadiographAugment(cfg.augment, pre.mean, pre.std, cfg.data.image_size)
    train_set = AugmentedDataset(labelled, augment, cfg.seed, cfg.data.image_sizes_by_epoch)
    sampler = epoch_sampler(cfg, train_table.targets(policy)[0][train_rows], len(train_set))
    train_loader = make_loader(train_set, cfg.train.batch_size, sampler, cfg.train.num_workers, drop_last=True,
                               **training.loader_options(cfg.train))
    return Stage1Data(classes, train_table.prevalence(policy), pre, val_table, train_loader,
                      eval_loader(cfg, val_table, pre))


def train_stage1(cfg: Stage1Config, extra_train=None, init_weights: Path | None = None) -> dict:
    """Train one stage-1 run in ``output_dir/name`` (resuming it, or returning its results when finished).

    ``extra_train``: more training images (a dataset of items with image / row / view / target / mask, e.g. the
    noisy student's pseudo-labelled external images), trained on together with the labelled CSV; the class
    weights of the loss still come from the labelled prevalence. ``init_weights``: start from these weights
    instead of the backbone's initialisation (a student initialised from its teacher).
    """
    accelerator, run_dir, finished = start_run(cfg, "stage 1")
    if finished is not None:
        return finished

    # ---- data ------------------------------------------------------------------------------------------------
    data = load_data(cfg, extra_train)
    train_set = data.train_loader.dataset
    accelerator.print(describe(cfg, data, 0 if extra_train is None else len(extra_train), accelerator))

    # ---- model, loss, optimisation ---------------------------------------------------------------------------
    model, text_queries = build_for_classes(cfg, data.classes)
    if init_weights is not None:
        load_weights(model, init_weights)
    loss_fn = build_loss(cfg.loss.name, cfg.loss.params, data.prevalence)
    mixer = batch_mixer(cfg.augment, len(data.classes))
    prepared = prepare_training(accelerator, cfg, model, (data.train_loader, data.val_loader), run_dir,
                                len(train_set), "images")

    def batch_loss(m, batch):
        if "image" not in batch:  # every image of this batch was unreadable (skip_bad_images): no step
            return None
        images, targets, mask = mix_batch(mixer, batch)
        return loss_fn(m(images).float(), targets, mask)

    def evaluate(m, loader, table, desc):
        probs, rows, skipped = predict_probs(m, loader, accelerator, cfg.tta_views(), desc)
        targets, mask = table.targets(label_policy(cfg))
        metrics = compute_metrics(targets[rows], probs, data.classes, train_prevalence=data.prevalence,
                                  mask=mask[rows])
        loss = validation_loss(loss_fn, probs, targets[rows], mask[rows])
        return {**metrics, "loss": loss, "skipped_images": len(skipped)}

    job = StageJob("stage1", run_dir, cfg.seed, batch_loss,
                   lambda m: evaluate(m, prepared.val_loader, data.val_table, "validate"),
                   epoch_setters=[data.train_loader.sampler, train_set])
    state = fit(accelerator, cfg.train, prepared, job)

    # ---- final evaluation of the best weights ----------------------------------------------------------------
    best = accelerator.unwrap_model(prepared.eval_model)
    results = {"best_epoch": state.progress.best_epoch, "classes": data.classes,
               "skipped_train_images": state.skipped_images,
               **({} if extra_train is None else {"extra_train_images": len(extra_train)}),
               "validation": evaluate(best, prepared.val_loader, data.val_table, "validate best")}
    if cfg.data.test_csv:
        test_table = read_cxr_lt(cfg.data.test_csv, classes=data.classes, require_labels=True)
        test_loader = accelerator.prepare(eval_loader(cfg, test_table, data.pre))
        results["test"] = evaluate(best, test_loader, test_table, "test")
    finish_run(accelerator, run_dir, results,
               lambda: write_run_info(run_dir, cfg, data.classes, data.prevalence, data.pre, best, text_queries))
    log_results(accelerator.print, cfg.name, results, state)
    return results


def describe(cfg: Stage1Config, data: Stage1Data, n_extra: int, accelerator) -> str:
    """The run's opening line: what it trains on, and where."""
    extra = f" (+{n_extra} pseudo-labelled)" if n_extra else ""
    return (f"stage 1 '{cfg.name}': {len(data.train_loader.dataset) - n_extra}{extra} training / "
            f"{len(data.val_loader.dataset)} validation images, {len(data.classes)} classes, "
            f"views={cfg.data.views}, device={accelerator.device}, processes={accelerator.num_processes}")


def log_results(log, name: str, results: dict, state) -> None:
    """The run's closing lines: the best weights' figures, and how many images could not be read."""
    log(f"stage 1 validation ({name}, best epoch {state.progress.best_epoch}): {summary_line(results['validation'])}")
    if "test" in results:
        log(f"stage 1 test       ({name}): {summary_line(results['test'])}")
    skipped = {"training": state.skipped_images, **{split: results[split]["skipped_images"]
                                                     for split in ("validation", "test") if split in results}}
    if any(skipped.values()):
        log("skipped unreadable images (left out of training and metrics): "
            + ", ".join(f"{count} in {split}" for split, count in skipped.items()))
