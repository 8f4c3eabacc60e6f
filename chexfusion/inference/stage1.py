"""A stage-1 run as a predictor: each image scored alone; a study gets the max over its images."""

from __future__ import annotations

import numpy as np
import torch

from ..data.tta import tta_mean
from ..errors import UserError
from ..feature_store.routing import study_ordered_rows
from .predictor import PredictionResult, Predictor, TableOptions, image_batches


class Stage1Predictor(Predictor):
    kind = "stage1"
    aggregation = "max"

    @torch.no_grad()
    def image_probs(self, images: torch.Tensor, tta: tuple = ()) -> torch.Tensor:
        """Per-image probabilities ``[n, K]`` on the CPU, averaged over the test-time views ``tta``."""
        return tta_mean(lambda x: torch.sigmoid(self.model(x).float()), images.to(self.device), tta).cpu()

    def score_study(self, images, views, attention, tta):
        if not attention:
            return self.image_probs(images, tta).max(dim=0).values, None
        logits, att = self.model.forward_with_attention(images.to(self.device))
        per_image = torch.sigmoid(logits.float()).cpu()
        if tta:  # the mean over the images and their views (as tta_mean), the attention of the images
            for view in tta:
                per_image = per_image + self.image_probs(view.apply(images))
            per_image = per_image / (1 + len(tta))
        _, h, w = self.run.info["feature_shape"]
        maps = att.float().cpu().reshape(images.shape[0], att.shape[1], h, w).transpose(0, 1)  # [Q, n, h, w]
        return per_image.max(dim=0).values, maps

    def score_table(self, table, image_root, options: TableOptions) -> PredictionResult:
        return score_images(self, table, image_root, options, self.model.decoder.num_classes)


def score_images(predictor: Predictor, table, image_root, options: TableOptions, width: int) -> PredictionResult:
    """Every image of ``table`` scored alone by ``predictor.image_probs`` (``width`` classes), in study order;
    with ``options.aggregate`` each image then takes its study's max or mean. Runs that score images one by one
    (stage 1, clip) share it."""
    rows_out, probs_out, skipped = [], [], []
    for batch in image_batches(table, image_root, predictor.preprocess, study_ordered_rows(table.frame),
                               options.batch_size, options.skip_bad_images, options.progress):
        skipped.extend(batch.get("skipped", []))
        if "image" not in batch:
            continue
        probs_out.append(predictor.image_probs(batch["image"], options.tta).numpy())
        rows_out.append(batch["row"].numpy())
    rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
    probs = np.concatenate(probs_out) if probs_out else np.zeros((0, width), np.float32)
    if options.aggregate:
        probs = aggregate_by_study(table.frame["study_id"].to_numpy()[rows], probs, options.aggregate)
    return PredictionResult(rows, probs, skipped)


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
