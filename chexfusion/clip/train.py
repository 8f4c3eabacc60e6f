"""The clip training run, top to bottom.

read the CSVs and reports -> pair each study with its report (held-out findings removed) -> build the two towers
-> ``fit`` (the loop both stages share: accelerate, AMP, EMA, checkpoints, exact resume, progress), keeping the
weights of the best validation mAP of zero-shot prompt scores over the trained classes -> score the validation
and test splits by prompts with the best weights -> ``run.json`` + ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import training
from ..data.augment import RadiographAugment
from ..data.cxr_lt import read_cxr_lt
from ..data.image_dataset import ImageDataset, collate_images
from ..data.images import Preprocess
from ..data.labels import LabelPolicy
from ..data.reports import read_reports_csv
from ..data.studies import group_studies
from ..metrics import compute_metrics
from ..progress import tqdm
from ..stage1.train import load_tables
from ..training import StageJob, finish_run, fit, prepare_training, start_run, summary_line
from .config import ClipConfig
from .data import CollatePairs, StudyPairs
from .losses import cluster_triplet_loss, info_nce
from .model import build_clip_model, text_folder, text_model, text_tokenizer, write_clip_run_info
from .reports import StudyTexts, study_texts
from .scoring import image_probabilities, prompt_embeddings


@dataclass
class ClipData:
    classes: list[str]
    prevalence: np.ndarray
    pre: Preprocess
    pairs: StudyPairs
    texts: StudyTexts
    val_table: object
    tokenizer: object


def load_data(cfg: ClipConfig, tokenizer) -> ClipData:
    """Tables, reports (held-out findings removed) and the training pairs of a run."""
    train_table, val_table, classes = load_tables(cfg)
    pre = Preprocess(image_size=cfg.data.image_size, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std))
    groups = group_studies(train_table.frame)
    texts = study_texts(list(groups), read_reports_csv(cfg.data.reports_csv), cfg.data.exclude_classes,
                        cfg.data.skip_missing_reports, cfg.data.reports_csv)
    images = ImageDataset(train_table, cfg.data.image_root, pre)
    augment = RadiographAugment(cfg.augment, pre.mean, pre.std, cfg.data.image_size) if cfg.augment.enabled else None
    pairs = StudyPairs(images, [groups[s] for s in texts.studies], texts.texts, cfg.data.views, augment, cfg.seed)
    return ClipData(classes, train_table.prevalence(LabelPolicy()), pre, pairs, texts, val_table, tokenizer)


def image_loader(cfg: ClipConfig, table, pre: Preprocess) -> torch.utils.data.DataLoader:
    """Every image of ``table`` in table order (prompt scoring: validation, test)."""
    return torch.utils.data.DataLoader(ImageDataset(table, cfg.data.image_root, pre), batch_size=cfg.train.batch_size,
                                       num_workers=cfg.train.num_workers, collate_fn=collate_images,
                                       **training.loader_options(cfg.train))


def pair_loader(cfg: ClipConfig, data: ClipData) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(data.pairs, batch_size=cfg.train.batch_size,
                                       sampler=training.EpochPermutationSampler(len(data.pairs), cfg.seed),
                                       num_workers=cfg.train.num_workers, drop_last=True,
                                       collate_fn=CollatePairs(data.tokenizer, cfg.data.max_text_tokens),
                                       **training.loader_options(cfg.train))


def score_split(model, loader, table, data: ClipData, cfg: ClipConfig, accelerator, desc: str) -> dict:
    """Zero-shot prompt scores of every image of ``loader`` for the run's classes, and their metrics."""
    model.eval()
    positive, negative = prompt_embeddings(model, data.tokenizer, data.classes, cfg.prompt_config(),
                                           cfg.data.max_text_tokens)
    probs, rows = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        p = image_probabilities(model, batch["image"], positive, negative).to(batch["row"].device)
        p, r = accelerator.gather_for_metrics((p, batch["row"]))
        probs.append(p.cpu())
        rows.append(r.cpu())
    probs, rows = torch.cat(probs).numpy(), torch.cat(rows).numpy()
    targets, mask = table.targets(LabelPolicy())
    return compute_metrics(targets[rows], probs, data.classes, train_prevalence=data.prevalence, mask=mask[rows])


def train_clip(cfg: ClipConfig) -> dict:
    """Train one clip run in ``output_dir/name`` (resuming it, or returning its results when finished)."""
    accelerator, run_dir, finished = start_run(cfg, "clip")
    if finished is not None:
        return finished
    folder = text_folder(cfg.model.text_encoder)
    data = load_data(cfg, text_tokenizer(folder))
    accelerator.print(describe(cfg, data, accelerator))
    model = build_clip_model(cfg, text_model(folder).train())
    train_loader = pair_loader(cfg, data)
    prepared = prepare_training(accelerator, cfg, model, (train_loader, image_loader(cfg, data.val_table, data.pre)),
                                run_dir, len(data.pairs), "studies")
    clusters = None
    if cfg.loss.cml_weight > 0:
        from .cml import ClusterAssignments

        clusters = ClusterAssignments(cfg, len(data.classes), accelerator.unwrap_model(prepared.model), data.pairs,
                                      run_dir)

    def batch_loss(m, batch):
        images, texts = m(batch["image"], batch["owner"], batch["input_ids"], batch["attention_mask"])
        loss = info_nce(images, texts, accelerator.unwrap_model(m).logit_scale())
        if clusters is not None:
            loss = loss + cfg.loss.cml_weight * cluster_triplet_loss(images, clusters.of(batch["study"]),
                                                                     cfg.loss.cml_margin)
        return loss

    def validate(m):
        return score_split(accelerator.unwrap_model(m), prepared.val_loader, data.val_table, data, cfg, accelerator,
                           "validate")

    job = StageJob("clip", run_dir, cfg.seed, batch_loss, validate, epoch_setters=[
        train_loader.sampler, data.pairs, *([clusters] if clusters is not None else [])])
    state = fit(accelerator, cfg.train, prepared, job)
    best = accelerator.unwrap_model(prepared.eval_model)
    results = {"best_epoch": state.progress.best_epoch, "classes": data.classes, "studies": study_counts(data),
               "validation": validate(best)}
    if cfg.data.test_csv:
        test_table = read_cxr_lt(cfg.data.test_csv, classes=data.classes, require_labels=True)
        results["test"] = score_split(best, accelerator.prepare(image_loader(cfg, test_table, data.pre)), test_table,
                                      data, cfg, accelerator, "test")
    finish_run(accelerator, run_dir, results,
               lambda: write_clip_run_info(run_dir, cfg, data.classes, data.prevalence, data.pre, folder))
    accelerator.print(f"clip validation ({cfg.name}, best epoch {state.progress.best_epoch}): "
                      f"{summary_line(results['validation'])}")
    if "test" in results:
        accelerator.print(f"clip test       ({cfg.name}): {summary_line(results['test'])}")
    return results


def study_counts(data: ClipData) -> dict:
    return {"trained": len(data.texts.studies), "missing_report": len(data.texts.missing),
            "report_only_held_out": len(data.texts.emptied)}


def describe(cfg: ClipConfig, data: ClipData, accelerator) -> str:
    """The run's opening line: what it trains on, what was left out, and where."""
    counts = study_counts(data)
    left = [f"{counts['missing_report']} without a report"] if counts["missing_report"] else []
    if counts["report_only_held_out"]:
        left.append(f"{counts['report_only_held_out']} whose report names only held-out findings")
    skipped = f" (skipped: {', '.join(left)})" if left else ""
    return (f"clip '{cfg.name}': {counts['trained']} training studies{skipped}, {len(data.val_table)} validation "
            f"images, prompts for {len(data.classes)} classes, views={cfg.data.views}, "
            f"cml_weight={cfg.loss.cml_weight}, device={accelerator.device}")
