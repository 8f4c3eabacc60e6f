"""The stage-2 training loop, top to bottom.

open the feature store (refused if stale) -> studies and their labels, each
split in memory or streamed (``streaming.py``) ->
build the fusion model -> ``fit`` (train, validate, keep the best, resume) ->
evaluate the best weights at study level and at image level (the CXR-LT
convention: every image gets its study's prediction), next to the stage-1
max-over-images baseline on the same cached features -> a self-contained run
folder that ``chexfusion predict`` runs from raw images.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import training
from ..data.cxr_lt import read_cxr_lt
from ..data.labels import LabelPolicy
from ..losses import build_loss
from ..metrics import compute_metrics
from ..training import StageJob, finish_run, fit, prepare_training, start_run, summary_line
from .config import Stage2Config
from .data import StudyDataset, collate_studies, image_study, study_labels
from .model import build_for_classes, write_run_info
from .store import open_store_for, stage1_classes
from .streaming import StreamedStudies, choose_reader


class Split:
    """One split as stage 2 sees it: cached maps (in memory, or streamed), studies, image and study labels.

    ``stream``: None loads the split in memory; else the keyword arguments of
    :class:`StreamedStudies` (shuffle buffer, seed, block) and only the split's
    metadata is loaded (``features`` is None). ``layout`` is what both readers
    know up front: per-image views and where each study starts and stops.
    """

    def __init__(self, store, name: str, csv: str, classes: list[str], policy: LabelPolicy, max_images: int,
                 stream: dict | None = None):
        self.name = name
        if stream is None:
            self.features = self.layout = store.load_split(name)
            rows = self.features.meta["csv_row"].to_numpy()
        else:
            self.features, self.layout = None, store.split_metadata(name)
            rows = self.layout.csv_rows
        table = read_cxr_lt(csv, classes=classes, require_labels=True)
        targets, mask = table.targets(policy)
        self.image_targets, self.image_mask = targets[rows], mask[rows]
        self.image_study = image_study(self.layout)
        self.targets, self.mask = study_labels(self.layout, self.image_targets, self.image_mask)
        if stream is None:
            self.dataset = StudyDataset(self.features, self.targets, self.mask, max_images)
        else:
            self.dataset = StreamedStudies(store, name, len(self.layout), self.targets, self.mask, max_images, **stream)
        self.skipped = store.manifest["splits"][name].get("skipped", [])


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


def split_metrics(split: Split, probs: np.ndarray, study_index: np.ndarray, classes, prevalence) -> dict:
    """Study-level metrics, and image-level ones with each image carrying its study's prediction.

    A study may come twice (accelerate completes the last batch of a streamed split under several processes with
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
    return {**image, "level": "image", "study_level": study, "skipped_images": len(split.skipped)}


def train_stage2(cfg: Stage2Config) -> dict:
    accelerator, run_dir, finished = start_run(cfg, "stage 2")
    if finished is not None:
        return finished
    log = accelerator.print

    # ---- data: the feature store, refused when it does not match the backbones and CSVs ------------------------
    store = open_store_for(cfg)
    classes, prevalence = stage1_classes(cfg)
    policy = LabelPolicy(uncertain=cfg.data.uncertain_label, blank=cfg.data.blank_label)
    csvs = {"train": cfg.data.train_csv, "val": cfg.data.val_csv}
    if cfg.data.test_csv and "test" in store.manifest["splits"]:
        csvs["test"] = cfg.data.test_csv
    splits = {}
    for name, csv in csvs.items():
        reader, why = choose_reader(cfg.features, store, name)
        log(f"stage 2 reads split '{name}' {'in memory' if reader == 'memory' else 'streamed'}: {why}")
        stream = None
        if reader == "stream":  # training: an order from (seed, epoch); evaluation: store order
            stream = dict(shuffle_buffer=cfg.features.shuffle_buffer if name == "train" else 0, seed=cfg.seed,
                          block=cfg.train.batch_size * accelerator.num_processes)
        splits[name] = Split(store, name, csv, classes, policy, cfg.model.max_images, stream)
    if splits["train"].features is not None:
        sampler = training.EpochPermutationSampler(len(splits["train"].dataset), cfg.seed)
        epoch_setters = [sampler]
    else:
        sampler, epoch_setters = None, [splits["train"].dataset]

    def loader(split, sampler=None, drop_last=False):
        return torch.utils.data.DataLoader(split.dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                                           collate_fn=collate_studies, num_workers=cfg.train.num_workers,
                                           drop_last=drop_last, **training.loader_options(cfg.train))

    train_loader, val_loader = loader(splits["train"], sampler, drop_last=True), loader(splits["val"])
    log(f"stage 2 '{cfg.name}': {len(splits['train'].dataset)} training / {len(splits['val'].dataset)} validation "
        f"studies, {len(classes)} classes, features {tuple(store.shape)} {store.manifest['dtype']} "
        f"({cfg.features.routing} backbone), device={accelerator.device}, processes={accelerator.num_processes}")

    # ---- model, loss, optimisation -----------------------------------------------------------------------------
    model, text_queries = build_for_classes(cfg, classes, store.shape)
    loss_fn = build_loss(cfg.loss.name, cfg.loss.params, prevalence)
    prepared = prepare_training(accelerator, cfg, model, (train_loader, val_loader), run_dir,
                                len(splits['train'].dataset), "studies")
    val_loader = prepared.val_loader

    def batch_loss(m, batch):
        logits = m(batch["features"], batch["views"], batch["image_mask"])
        return loss_fn(logits.float(), batch["target"], batch["mask"])

    def evaluate(m, split_name, loader_, desc):
        probs, index = study_probs(m, loader_, accelerator, desc)
        return split_metrics(splits[split_name], probs, index, classes, prevalence)

    job = StageJob("stage2", run_dir, cfg.seed, batch_loss, lambda m: evaluate(m, "val", val_loader, "validate"),
                   epoch_setters)
    state = fit(accelerator, cfg.train, prepared, job)

    # ---- final evaluation: best weights, and the stage-1 max-over-images baseline ------------------------------
    best = accelerator.unwrap_model(prepared.eval_model)
    results = {"best_epoch": state.progress.best_epoch, "classes": classes,
               "validation": evaluate(best, "val", val_loader, "validate best")}
    if "test" in splits:
        results["test"] = evaluate(best, "test", accelerator.prepare(loader(splits["test"])), "test")
    results["stage1_baseline"] = stage1_baseline(cfg, store, splits, classes, prevalence, accelerator)
    finish_run(accelerator, run_dir, results,
               lambda: write_run_info(run_dir, cfg, classes, prevalence, store.manifest, text_queries))
    for split in ("validation", "test"):
        if split in results:
            log(f"stage 2 {split:<10} ({cfg.name}, image level): {summary_line(results[split])}")
            base = results["stage1_baseline"].get(split)
            if base:
                log(f"stage 1 max-over-images baseline, {split}: {summary_line(base)}")
    return results


@torch.no_grad()
def stage1_baseline(cfg, store, splits, classes, prevalence, accelerator) -> dict:
    """The stage-1 model's study score (max over a study's images) from the same cached maps, at image level."""
    from .store import baseline_image_probs

    out = {}
    for split_name, key in (("val", "validation"), ("test", "test")):
        if split_name not in splits:
            continue
        split = splits[split_name]
        probs = baseline_image_probs(cfg, store, split, classes, accelerator.device)
        if probs is None:
            return {}
        study_max = np.maximum.reduceat(probs, split.layout.study_starts, axis=0)
        out[key] = compute_metrics(split.image_targets, study_max[split.image_study], classes,
                                   train_prevalence=prevalence, mask=split.image_mask)
    return out
