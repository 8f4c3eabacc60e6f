"""A stage-2 run as a predictor: the study scored by the fusion model from all its images.

Each image goes through the stage-1 backbone of its view (as the feature store
routed it); the map is pooled and rounded to the store's dtype exactly as in
the store (``feature_store.routing``), and the fusion model scores each study
from at most ``max_images`` of its images, frontal first. Every image of a
study, also those past ``max_images``, carries the study's prediction.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.views import VIEW_INDEX
from ..feature_store.routing import RoutedBackbones, study_ordered_rows
from .predictor import PredictionResult, Predictor, TableOptions, image_batches


class Stage2Predictor(Predictor):
    kind = "stage2"
    aggregation = "fusion"

    def __init__(self, run, device="cpu", calibrated: bool = True):
        super().__init__(run, device, calibrated)
        info = run.info
        self.routed = RoutedBackbones({slot: r.model.backbone for slot, r in run.backbones.items()},
                                      info["routing"], info["unknown_view"], info.get("pool"), info["feature_dtype"],
                                      self.device)
        self.max_images = info["max_images"]

    @torch.no_grad()
    def study_probs(self, studies: list[tuple[torch.Tensor, list[str]]], return_attention: bool = False):
        """Probabilities [S, K] for studies given as (cached maps [n, C, h, w], views) in scoring order."""
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

    def score_study(self, images, views, attention, tta):
        maps = self.routed.maps(images, views)
        if not attention:
            probs = self.study_probs([(maps, views)])
        else:
            probs, att = self.study_probs([(maps, views)], return_attention=True)
        if tta:  # the mean over the study and its views (as tta_mean), the attention of the images themselves
            for view in tta:
                probs = probs + self.study_probs([(self.routed.maps(view.apply(images), views), views)])
            probs = probs / (1 + len(tta))
        return probs[0], (self.model.attention_maps(att)[0] if attention else None)  # [K], [Q, n, h, w]

    def score_table(self, table, image_root, options: TableOptions) -> PredictionResult:
        """Images stream in study order; a study is scored once the first image of the next one shows up, and
        studies are fused ``batch_size`` at a time."""
        frame = table.frame
        rows = study_ordered_rows(frame)
        study_of, views_of = frame["study_id"].to_numpy(), frame["view"].to_numpy()
        pending = _PendingStudies(self, options.batch_size, options.tta)
        skipped = []
        for batch in image_batches(table, image_root, self.preprocess, rows, options.batch_size,
                                   options.skip_bad_images, options.progress):
            skipped.extend(batch.get("skipped", []))
            if "image" not in batch:
                continue
            batch_rows = batch["row"].tolist()
            views = [views_of[r] for r in batch_rows]
            variants = [self.routed.maps(batch["image"], views)]  # the images, then each test-time view
            variants += [self.routed.maps(view.apply(batch["image"]), views) for view in options.tta]
            for i, r in enumerate(batch_rows):
                pending.add(study_of[r], r, views[i], [maps[i : i + 1] for maps in variants])
        pending.close()
        probs = np.stack(pending.probs_out) if pending.probs_out else np.zeros((0, self.model.decoder.num_classes),
                                                                                 np.float32)
        return PredictionResult(np.asarray(pending.rows_out, dtype=np.int64), probs, skipped)


class _PendingStudies:
    """The study being gathered image by image, and finished studies waiting to be fused as one batch. Each
    image brings its maps under every test-time variant (the images first, then each view)."""

    def __init__(self, predictor: Stage2Predictor, batch_size: int, tta: tuple):
        self.predictor, self.batch_size, self.n_variants = predictor, batch_size, 1 + len(tta)
        self.study, self.rows, self.views, self.variants = None, [], [], []
        self.ready: list = []
        self.rows_out: list[int] = []
        self.probs_out: list[np.ndarray] = []

    def add(self, study, row, view, variants: list) -> None:
        if self.study != study:
            self._finish_study()
            self.study = study
            self._flush(force=False)
        self.rows.append(row)
        self.views.append(view)
        self.variants.append(variants)

    def close(self) -> None:
        self._finish_study()
        self._flush(force=True)

    def _finish_study(self) -> None:
        if self.rows:
            per_variant = [torch.cat([image[v] for image in self.variants]) for v in range(self.n_variants)]
            self.ready.append((self.rows, self.views, per_variant))
        self.rows, self.views, self.variants = [], [], []

    def _flush(self, force: bool) -> None:
        if not self.ready or (len(self.ready) < self.batch_size and not force):
            return
        p = self.predictor
        probs = p.study_probs([(f[0], v) for _, v, f in self.ready])
        for variant in range(1, self.n_variants):
            probs = probs + p.study_probs([(f[variant], v) for _, v, f in self.ready])
        probs = probs / self.n_variants
        for (rows, _, _), prob in zip(self.ready, probs.numpy()):
            self.rows_out.extend(rows)  # every image of the study, also those past max_images
            self.probs_out.extend([prob] * len(rows))
        self.ready.clear()
