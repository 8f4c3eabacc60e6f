"""The model behind the demo: loaded once, shared by every request, scoring one study at a time.

Requests are served from a thread pool. Decoding runs in parallel but at most
``decode_slots`` images at once (a bound on memory, whatever the number of
requests); the model runs under one lock, so concurrent requests never share a
forward pass's state and torch's intra-op threads serve one study at a time
instead of oversubscribing the cores.

A stage-2 run scores the study from all its images together (at most the run's
``max_images``, frontal first, exactly as ``chexfusion predict``); a stage-1 run
scores each image alone and the study gets the maximum over its images.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..data.views import VIEW_INDEX
from .class_sets import ClassSet, ClassSets
from .heatmap import class_heatmaps
from .limits import ServeLimits
from .multipart import UploadedFile
from .uploads import PreparedImage, prepare_image

AGGREGATION = {"stage2": "fusion", "stage1": "max"}


@dataclass
class StudyPrediction:
    probabilities: np.ndarray  # [K], the study's
    used: list[int]  # indices of the images that were scored, in scoring order
    heatmaps: np.ndarray  # [K, len(used), h, w], per class scaled so the study's max is 1
    aggregation: str  # fusion (stage 2) or max (stage 1: max over images)
    method: str = "attention"  # attention | gradcam | groupcam (chexfusion.explain.cam)
    mapped: list[int] | None = None  # the classes that have a map (None: every class)


def scoring_order(views: list[str]) -> list[int]:
    """Frontal, then lateral, then unknown; ties keep the upload order (the stage-2 canonical order)."""
    return sorted(range(len(views)), key=lambda i: VIEW_INDEX[views[i]])


class StudyEngine:
    """A loaded predictor plus what the demo needs around it (groups, heat map queries, locks)."""

    def __init__(self, predictor, limits: ServeLimits, run_name: str):
        self.predictor, self.limits, self.run_name = predictor, limits, run_name
        self.kind = predictor.kind
        self.class_sets = ClassSets(predictor)  # the run's own classes, or names a request asks for
        self.classes = self.class_sets.own.names
        self.max_images = int(getattr(predictor, "max_images", 0) or 0) or None  # None: stage 1 has no cap
        self._model_lock = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(limits.decode_slots)
        self._explained_model = None  # the run as Grad-CAM / Group-CAM see it, made on first use

    def prepare(self, uploads: list[UploadedFile], views: list[str]) -> list[PreparedImage]:
        """Decode every upload (raises ``Rejected`` naming the first bad file)."""
        prepared = []
        for upload, view in zip(uploads, views):
            with self._decode_slots:
                prepared.append(prepare_image(upload, view, self.predictor.preprocess, self.limits))
        return prepared

    def predict(self, images: list[PreparedImage], chosen: ClassSet | None = None,
                method: str = "attention") -> StudyPrediction:
        """Score the study for ``chosen``'s classes (default: the run's own), in their order; heat maps by
        ``method`` (the decoder's attention, or Grad-CAM / Group-CAM from :mod:`chexfusion.explain`)."""
        chosen = chosen or self.class_sets.own
        views = [im.view for im in images]
        order = scoring_order(views)
        used = order[: self.max_images] if self.max_images else order
        batch = torch.stack([images[i].tensor for i in used])
        used_views = [views[i] for i in used]
        with self._model_lock, chosen.scored_by(self.predictor.model.decoder):
            with torch.inference_mode():
                if self.kind == "stage2":
                    probs, query_maps = self._stage2(batch, used_views)
                else:
                    probs, query_maps = self._stage1(batch)
            if method == "attention":
                maps, mapped = class_heatmaps(query_maps, chosen.query_index), None
            else:  # gradients: outside inference mode, still under the lock and the chosen classes
                from ..explain.serve_maps import study_cam_maps  # explain reads serve.heatmap: import late

                maps, mapped = study_cam_maps(self._explained(), method, batch, used_views, probs.numpy())
        return StudyPrediction(probs.numpy().astype(np.float64), used, maps, AGGREGATION[self.kind], method, mapped)

    def _explained(self):
        if self._explained_model is None:
            from ..explain.models import explained_model

            self._explained_model = explained_model(self.predictor)
        return self._explained_model

    def _stage2(self, batch: torch.Tensor, views: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.predictor
        maps = p.image_features(batch, views)
        probs, attention = p.study_probs([(maps, views)], return_attention=True)
        return probs[0], p.model.attention_maps(attention)[0]  # [K], [Q, n, h', w']

    def _stage1(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.predictor
        logits, attention = p.model.forward_with_attention(batch.to(p.device))
        per_image = torch.sigmoid(logits.float()).cpu()  # [n, K]
        _, h, w = p.run.info["feature_shape"]
        maps = attention.float().cpu().reshape(batch.shape[0], attention.shape[1], h, w)
        return per_image.max(dim=0).values, maps.transpose(0, 1)  # [K], [Q, n, h, w]
