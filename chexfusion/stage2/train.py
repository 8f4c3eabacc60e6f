"""The stage-2 training loop, top to bottom.

open the feature store (refused if stale) -> studies and their labels, each
split in memory or streamed behind one Dataset (``studies.py``) ->
build the fusion model -> ``fit`` (train, validate, keep the best, resume) ->
evaluate the best weights at study level and at image level (the CXR-LT
convention: every image gets its study's prediction), next to the stage-1
max-over-images baseline on the same cached features (``baseline.py``) -> a
self-contained run folder that ``chexfusion predict`` runs from raw images.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.cxr_lt import read_cxr_lt
from ..data.labels import LabelPolicy
from ..errors import UserError
from ..feature_store import integrity
from ..feature_store.routing import study_ordered_rows
from ..losses import build_loss
from ..metrics import compute_metrics
from ..progress import tqdm
from ..training import (
    StageJob,
    finish_run,
    fit,
    loader_options,
    prepare_training,
    start_run,
    summary_line,
    validation_loss,
)
from .baseline import stage1_baseline
from .config import Stage2Config
from .model import build_for_classes, write_run_info
from .store import open_store_for, stage1_classes
from .studies import ShardedSource, StudyItems, choose_reader, collate_studies, image_study, open_source, study_labels


class Split:
    """One split as stage 2 sees it: its source of studies, their items, and image and study labels.

    ``source`` (``studies.py``) holds the split in memory or streams it; its
    layout, which both know up front, labels every image and study.
    """

    def __init__(self, store, name: str, source, csv: str, classes: list[str], policy: LabelPolicy,
                 max_images: int):
        self.name, self.source, self.layout = name, source, source.layout
        table = read_cxr_lt(csv, classes=classes, require_labels=True)
        check_coverage(store, name, table, self.layout)
        targets, mask = table.targets(policy)
        self.image_targets, self.image_mask = targets[self.layout.csv_rows], mask[self.layout.csv_rows]
        self.image_study = image_study(self.layout)
        self.targets, self.mask = study_labels(self.layout, self.image_targets, self.image_mask)
        self.dataset = StudyItems(source, self.targets, self.mask, max_images)
        self.skipped = store.manifest["splits"][name].get("skipped", [])


def check_coverage(store, name: str, table, layout) -> None:
    """Refuse a split that does not hold exactly its CSV's rows in store order, less the skipped images: labels
    are taken by CSV row, so a swapped, dropped or shifted shard would train on wrong labels silently."""
    skipped = store.manifest["splits"][name].get("skipped", [])
    order = study_ordered_rows(table.frame)
    if skipped:
        order = order[~np.isin(table.frame["dicom_id"].astype(str).to_numpy()[order], skipped)]
    integrity.check_coverage(store.path, name, store.manifest["splits"][name], order, layout.csv_rows)


def split_source(cfg: Stage2Config, store, name: str, reader: str, accelerator):
    """Where a split's studies come from: the training split in an order from (seed, epoch), streamed in
    per-process shares; evaluation splits in store order (``studies.py``)."""
    block = cfg.train.batch_size * accelerator.num_processes
    if name != "train" or reader == "memory":
        return open_source(store, name, reader, shuffle=name == "train", seed=cfg.seed,
                           shuffle_buffer=cfg.features.shuffle_buffer, block=block)
    if cfg.features.stream_lanes % max(cfg.train.num_workers, 1):
        raise UserError(f"train.num_workers {cfg.train.num_workers} must divide features.stream_lanes "
                        f"{cfg.features.stream_lanes} when the training split is streamed")
    return ShardedSource(store, name, seed=cfg.seed, batch=cfg.train.batch_size, rank=accelerator.process_index,
                         world=accelerator.num_processes, lanes=cfg.features.stream_lanes,
                         shuffle_buffer=cfg.features.shuffle_buffer)


@torch.no_grad()
def study_probs(model, loader, accelerator, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities per study (gathered over processes) and the study indices they belong to."""
    model.eval()
    probs, index = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        p = torch.sigmoid(model(batch["features"], batch["views"], batch["image_mask"]).float())
        p, s = accelerator.gather_for_metrics((p, batch["study"]))
        probs.append(p.cpu())
        index.append(s.cpu())
    return torch.cat(probs).numpy(), torch.cat(index).numpy()


def split_metrics(split: Split, probs: np.ndarray, study_index: np.ndarray, classes, prevalence,
                  loss_fn=None) -> dict:
    """Study-level metrics, and image-level ones with each image carrying its study's prediction; with
    ``loss_fn``, the study-level validation loss as ``loss`` (``train.select_on: loss``).

    A study may come twice (accelerate completes the last batch of a split under several processes with
    studies from its first batch); every study must come at least once.
    """
    by_study, scored = np.empty((len(split.targets), probs.shape[1]), probs.dtype), np.zeros(len(split.targets), bool)
    by_study[study_index], scored[study_index] = probs, True
    if not scored.all():
        raise RuntimeError(f"split '{split.name}': {int((~scored).sum())} of {len(scored)} studies were not scored")
    image_probs = by_study[split.image_study]
    image = compute_metrics(split.image_targets, image_probs, classes, train_prevalence=prevalence,
                            mask=split.image_mask)
    study = compute_metrics(split.targets, by_study, classes, train_prevalence=prevalence, mask=split.mask)
    loss = {} if loss_fn is None else {"loss": validation_loss(loss_fn, by_study, split.targets, split.mask)}
    return {**image, **loss, "level": "image", "study_level": study, "skipped_images": len(split.skipped)}


def stage2_loader_options(train_cfg) -> dict:
    """The DataLoader fast paths for stage 2, less persistent workers: each worker reads the epoch (the streamed
    order) from its copy of the dataset when it starts, so workers are started afresh every epoch. (Stage 1 keeps
    them, its epoch in shared memory; here a gloo run with a shared epoch aborted once under load, not reproduced.)"""
    return {k: v for k, v in loader_options(train_cfg).items() if k != "persistent_workers"}


def open_splits(cfg: Stage2Config, store, classes: list[str], accelerator) -> dict[str, Split]:
    """The train, val and (when the store has it) test splits, each read in memory or streamed, as the config and
    the split's size decide; says which on the log."""
    policy = LabelPolicy(uncertain=cfg.data.uncertain_label, blank=cfg.data.blank_label)
    csvs = {"train": cfg.data.train_csv, "val": cfg.data.val_csv}
    if cfg.data.test_csv and "test" in store.manifest["splits"]:
        csvs["test"] = cfg.data.test_csv
    splits = {}
    with accelerator.local_main_process_first():  # it writes a split's mapped copy the others then share
        for name, csv in csvs.items():
            reader, why = choose_reader(cfg.features, store, name)
            accelerator.print(f"stage 2 reads split '{name}' {'in memory' if reader == 'memory' else 'streamed'}: "
                              f"{why}")
            splits[name] = Split(store, name, split_source(cfg, store, name, reader, accelerator), csv, classes,
                                 policy, cfg.model.max_images)
    return splits


def study_loader(cfg: Stage2Config, split: Split, drop_last: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(split.dataset, batch_size=cfg.train.batch_size, collate_fn=collate_studies,
                                       num_workers=cfg.train.num_workers, drop_last=drop_last,
                                       **stage2_loader_options(cfg.train))


def train_stage2(cfg: Stage2Config) -> dict:
    """Train one stage-2 run in ``output_dir/name`` (resuming it, or returning its results when finished)."""
    accelerator, run_dir, finished = start_run(cfg, "stage 2")
    if finished is not None:
        return finished

    # ---- data: the feature store, refused when it does not match the backbones and CSVs ------------------------
    store = open_store_for(cfg)
    classes, prevalence = stage1_classes(cfg)
    splits = open_splits(cfg, store, classes, accelerator)
    train_loader, val_loader = study_loader(cfg, splits["train"], drop_last=True), study_loader(cfg, splits["val"])
    accelerator.print(
        f"stage 2 '{cfg.name}': {len(splits['train'].dataset)} training / {len(splits['val'].dataset)} validation "
        f"studies, {len(classes)} classes, features {tuple(store.shape)} {store.manifest['dtype']} "
        f"({cfg.features.routing} backbone), device={accelerator.device}, processes={accelerator.num_processes}")

    # ---- model, loss, optimisation -----------------------------------------------------------------------------
    model, text_queries = build_for_classes(cfg, classes, store.shape)
    loss_fn = build_loss(cfg.loss.name, cfg.loss.params, prevalence)
    prepared = prepare_training(accelerator, cfg, model, (train_loader, val_loader), run_dir,
                                len(splits['train'].dataset), "studies")
    val_loader = prepared.val_loader

    def batch_loss(m, batch):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}  # a sharded stream is not prepared
        logits = m(batch["features"], batch["views"], batch["image_mask"])
        return loss_fn(logits.float(), batch["target"], batch["mask"])

    def evaluate(m, split_name, loader_, desc):
        probs, index = study_probs(m, loader_, accelerator, desc)
        return split_metrics(splits[split_name], probs, index, classes, prevalence, loss_fn)

    job = StageJob("stage2", run_dir, cfg.seed, batch_loss, lambda m: evaluate(m, "val", val_loader, "validate"),
                   [splits["train"].dataset])
    state = fit(accelerator, cfg.train, prepared, job)

    # ---- final evaluation: best weights, and the stage-1 max-over-images baseline ------------------------------
    best = accelerator.unwrap_model(prepared.eval_model)
    results = {"best_epoch": state.progress.best_epoch, "classes": classes,
               "validation": evaluate(best, "val", val_loader, "validate best")}
    if "test" in splits:
        results["test"] = evaluate(best, "test", accelerator.prepare(study_loader(cfg, splits["test"])), "test")
    results["stage1_baseline"] = stage1_baseline(cfg, store, splits, classes, prevalence, accelerator.device)
    finish_run(accelerator, run_dir, results,
               lambda: write_run_info(run_dir, cfg, classes, prevalence, store.manifest, text_queries))
    log_results(accelerator.print, cfg.name, results)
    return results


def log_results(log, name: str, results: dict) -> None:
    """The run's closing lines: image-level figures of the best weights beside the stage-1 baseline's."""
    for split in ("validation", "test"):
        if split in results:
            log(f"stage 2 {split:<10} ({name}, image level): {summary_line(results[split])}")
            base = results["stage1_baseline"].get(split)
            if base:
                log(f"stage 1 max-over-images baseline, {split}: {summary_line(base)}")
