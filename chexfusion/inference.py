"""Run a trained model on raw images: the engine behind ``chexfusion predict`` and the web demo.

``load_predictor(run_dir)`` returns a predictor for either kind of run:

- a stage-2 run: each image goes through the stage-1 backbone of its view (as
  the feature store routed it), the map is pooled and rounded to the store's
  dtype exactly as in the store, and the fusion model scores each *study* from
  all of its images (at most ``max_images``, frontal first);
- a stage-1 run: each image is scored alone; ``aggregate`` (max or mean) gives
  every image of a study the study's value.

Images stream through in study order, so memory holds one batch of studies,
whatever the size of the CSV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .data.image_dataset import ImageDataset, collate_images
from .data.studies import group_studies
from .data.views import VIEW_INDEX, VIEWS
from .errors import UserError

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def route_view(view: str, routing: str, unknown_view: str) -> str:
    """The backbone slot an image goes through: the shared one, or the one of its view (unknown as configured)."""
    if routing == "shared":
        return "shared"
    return unknown_view if view == "unknown" else view


def cached_features(feature_map: torch.Tensor, pool, dtype: str) -> torch.Tensor:
    """What the feature store keeps of a backbone map: optionally pooled, rounded to the store dtype."""
    if pool:
        feature_map = F.adaptive_avg_pool2d(feature_map, tuple(pool))
    return feature_map.to(TORCH_DTYPES[dtype])


@dataclass
class PredictionResult:
    rows: np.ndarray  # table rows that got a prediction
    probs: np.ndarray  # [len(rows), K]
    skipped: list  # rows whose image could not be read (skip_bad_images)


class Predictor(Protocol):
    """What predict and the web demo use of either kind of run."""

    kind: str
    classes: list[str]
    train_prevalence: np.ndarray

    def predict_table(self, table, image_root, batch_size: int = 32, tta: bool = False,
                      skip_bad_images: bool = False, aggregate: str | None = None,
                      progress: bool = True) -> PredictionResult: ...


def study_ordered_rows(frame) -> np.ndarray:
    """All rows, each study's images together in canonical order, studies in order of first appearance."""
    groups = group_studies(frame)
    return np.concatenate(list(groups.values())).astype(np.int64) if groups else np.zeros(0, np.int64)


def _image_batches(table, image_root, pre, rows, batch_size, skip_bad_images, progress, desc):
    from tqdm.auto import tqdm

    dataset = ImageDataset(table, image_root, pre, None, skip_bad_images=skip_bad_images, rows=rows)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images)
    return tqdm(loader, desc=desc, unit="batch", disable=not progress)


class Stage1Predictor:
    kind = "stage1"

    def __init__(self, run, device="cpu"):
        self.run, self.device = run, torch.device(device)
        self.model = run.model.to(self.device).eval()
        self.classes, self.preprocess = run.classes, run.preprocess
        self.train_prevalence = run.train_prevalence

    @torch.no_grad()
    def image_probs(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        images = images.to(self.device)
        p = torch.sigmoid(self.model(images).float())
        if tta:
            p = 0.5 * (p + torch.sigmoid(self.model(torch.flip(images, dims=[-1])).float()))
        return p.cpu()

    def predict_table(self, table, image_root, batch_size=32, tta=False, skip_bad_images=False, aggregate=None,
                      progress=True) -> PredictionResult:
        rows_out, probs_out, skipped = [], [], []
        rows = study_ordered_rows(table.frame)
        for batch in _image_batches(table, image_root, self.preprocess, rows, batch_size, skip_bad_images, progress,
                                    "predict"):
            skipped.extend(batch.get("skipped", []))
            if "image" not in batch:
                continue
            probs_out.append(self.image_probs(batch["image"], tta).numpy())
            rows_out.append(batch["row"].numpy())
        rows_arr = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
        probs = np.concatenate(probs_out) if probs_out else np.zeros((0, len(self.classes)), np.float32)
        if aggregate:
            probs = aggregate_by_study(table.frame["study_id"].to_numpy()[rows_arr], probs, aggregate)
        return PredictionResult(rows_arr, probs, skipped)


def aggregate_by_study(study_ids: np.ndarray, probs: np.ndarray, how: str) -> np.ndarray:
    """Give every image its study's max or mean probability."""
    if how not in ("max", "mean"):
        raise UserError(f"--aggregate must be max or mean, got '{how}'")
    out = np.empty_like(probs)
    _, inverse = np.unique(study_ids, return_inverse=True)
    for s in range(inverse.max() + 1 if len(inverse) else 0):
        idx = inverse == s
        out[idx] = probs[idx].max(axis=0) if how == "max" else probs[idx].mean(axis=0)
    return out


class Stage2Predictor:
    kind = "stage2"

    def __init__(self, run, device="cpu"):
        self.run, self.device = run, torch.device(device)
        self.model = run.model.to(self.device).eval()
        self.backbones = {slot: r.model.to(self.device).eval() for slot, r in run.backbones.items()}
        self.classes, self.preprocess = run.classes, run.preprocess
        self.train_prevalence = run.train_prevalence
        info = run.info
        self.routing, self.unknown_view = info["routing"], info["unknown_view"]
        self.pool, self.dtype, self.max_images = info.get("pool"), info["feature_dtype"], info["max_images"]

    @torch.no_grad()
    def image_features(self, images: torch.Tensor, views: list[str]) -> torch.Tensor:
        """Cached-equivalent feature maps [B, C, h, w] for a batch, each image through its view's backbone."""
        images = images.to(self.device)
        slots = [route_view(v, self.routing, self.unknown_view) for v in views]
        out = None
        for slot in sorted(set(slots)):
            idx = torch.tensor([i for i, s in enumerate(slots) if s == slot], device=self.device)
            feats = cached_features(self.backbones[slot].forward_features(images[idx]), self.pool, self.dtype)
            if out is None:
                out = torch.empty((len(slots), *feats.shape[1:]), dtype=feats.dtype, device=self.device)
            out[idx] = feats
        return out

    @torch.no_grad()
    def study_probs(self, studies: list[tuple[torch.Tensor, list[str]]], return_attention: bool = False):
        """Probabilities [S, K] for studies given as (cached maps [n, C, h, w], views) in canonical order."""
        studies = [(f[: self.max_images], v[: self.max_images]) for f, v in studies]
        n_max = max(f.shape[0] for f, _ in studies)
        first = studies[0][0]
        feats = torch.zeros((len(studies), n_max, *first.shape[1:]), dtype=first.dtype, device=self.device)
        views = torch.zeros((len(studies), n_max), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(studies), n_max), dtype=torch.bool, device=self.device)
        for b, (f, v) in enumerate(studies):
            feats[b, : f.shape[0]] = f
            views[b, : f.shape[0]] = torch.tensor([VIEW_INDEX[x] for x in v])
            mask[b, : f.shape[0]] = True
        out = self.model(feats, views, mask, return_attention=return_attention)
        if return_attention:
            logits, attention = out
            return torch.sigmoid(logits.float()).cpu(), attention.cpu()
        return torch.sigmoid(out.float()).cpu()

    def predict_table(self, table, image_root, batch_size=32, tta=False, skip_bad_images=False, aggregate=None,
                      progress=True) -> PredictionResult:
        frame = table.frame
        rows = study_ordered_rows(frame)
        study_of = frame["study_id"].to_numpy()
        views_of = frame["view"].to_numpy()
        # Images arrive in study order; a study is scored as soon as the first image of the next study shows up.
        pending: dict = {"study": None, "rows": [], "feats": [], "flipped": []}
        ready: list = []
        rows_out, probs_out, skipped = [], [], []

        def close_pending():
            if pending["rows"]:
                ready.append((list(pending["rows"]), torch.cat(pending["feats"]),
                              torch.cat(pending["flipped"]) if tta else None))
            pending.update(rows=[], feats=[], flipped=[])

        def flush(force=False):
            if not ready or (len(ready) < batch_size and not force):
                return
            views = [[views_of[r] for r in study_rows] for study_rows, _, _ in ready]
            probs = self.study_probs([(f, v) for (_, f, _), v in zip(ready, views)])
            if tta:
                probs = 0.5 * (probs + self.study_probs([(f, v) for (_, _, f), v in zip(ready, views)]))
            for (study_rows, _, _), p in zip(ready, probs.numpy()):
                # every image of the study, also those past max_images, gets the study's prediction
                rows_out.extend(study_rows)
                probs_out.extend([p] * len(study_rows))
            ready.clear()

        for batch in _image_batches(table, image_root, self.preprocess, rows, batch_size, skip_bad_images, progress,
                                    "predict"):
            skipped.extend(batch.get("skipped", []))
            if "image" not in batch:
                continue
            batch_rows = batch["row"].tolist()
            feats = self.image_features(batch["image"], [views_of[r] for r in batch_rows])
            flipped = self.image_features(torch.flip(batch["image"], dims=[-1]),
                                          [views_of[r] for r in batch_rows]) if tta else None
            for i, r in enumerate(batch_rows):
                if pending["study"] != study_of[r]:
                    close_pending()
                    pending["study"] = study_of[r]
                    flush()
                pending["rows"].append(r)
                pending["feats"].append(feats[i : i + 1])
                if tta:
                    pending["flipped"].append(flipped[i : i + 1])
        close_pending()
        flush(force=True)
        probs = np.stack(probs_out) if probs_out else np.zeros((0, len(self.classes)), np.float32)
        return PredictionResult(np.asarray(rows_out, dtype=np.int64), probs, skipped)


@dataclass
class NamedClasses:
    """Class names encoded for a text-query run's decoder (see :func:`encode_class_names`)."""

    names: list[str]
    queries: torch.Tensor  # [K, D] embeddings, encoded with the run's recorded text setup
    trained_index: list[int]  # per name, its index among the run's trained classes, or -1
    train_prevalence: np.ndarray  # the trained classes' prevalence; NaN for a name not trained on


def encode_class_names(predictor: Predictor, names: list[str]) -> NamedClasses:
    """Encode ``names`` for ``predictor``'s decoder: zero-shot scoring of findings it never saw.

    Only a run trained with text queries can do this (others are a UserError): the names are encoded with the
    text setup it was trained with (from the embedding cache when possible). Names it was trained on get the
    embeddings they were trained with, and their training prevalence; a new name's prevalence is unknown (NaN).
    """
    run = predictor.run
    record = run.info.get("text_queries")
    if not record:
        raise UserError(f"run {run.path} has learned class queries: it scores only its own {len(predictor.classes)} "
                        f"classes (train it with model.queries=text to score other names)")
    from .text.queries import zero_shot_queries

    trained = {name: k for k, name in enumerate(run.classes)}
    known = dict(zip(run.classes, run.train_prevalence))
    return NamedClasses(list(names), zero_shot_queries(record, list(names), run.path),
                        [trained.get(name, -1) for name in names],
                        np.array([known.get(name, np.nan) for name in names]))


def use_classes(predictor: Predictor, names: list[str]) -> None:
    """Make ``predictor`` score ``names`` instead of its run's classes (:func:`encode_class_names`), for good."""
    named = encode_class_names(predictor, names)
    predictor.model.decoder.set_label_queries(named.queries, named.trained_index)
    predictor.train_prevalence = named.train_prevalence
    predictor.classes = named.names


def load_predictor(run_dir: str | Path, device: str | None = None) -> Predictor:
    """A predictor for a stage-1 or stage-2 run folder (the kind is read from its run.json)."""
    import json

    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise UserError(f"{run_dir} is not a finished chexfusion run (no run.json)")
    kind = json.loads(info_path.read_text()).get("kind")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "stage1":
        from .stage1.model import load_stage1_run

        return Stage1Predictor(load_stage1_run(run_dir), device)
    if kind == "stage2":
        from .stage2.model import load_stage2_run

        return Stage2Predictor(load_stage2_run(run_dir), device)
    raise UserError(f"{info_path}: unknown run kind '{kind}'")


__all__ = ["load_predictor", "use_classes", "encode_class_names", "NamedClasses", "Predictor", "Stage1Predictor", "Stage2Predictor", "PredictionResult",
           "route_view", "cached_features", "aggregate_by_study", "VIEWS"]
