"""The model behind the demo: loaded once, shared by every request, scoring one study at a time.

Requests are served from a thread pool. Decoding runs in parallel but at most
``decode_slots`` images at once (a bound on memory, whatever the number of
requests); the model runs under one lock, so concurrent requests never share a
forward pass's state and torch's intra-op threads serve one study at a time
instead of oversubscribing the cores.

Scoring is the predictor's ``predict_study``, as for ``chexfusion predict`` and
the Python API: a stage-2 run scores the study from all its images together (at
most the run's ``max_images``, frontal first); a stage-1 run scores each image
alone and the study gets the maximum over its images.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from .class_sets import ClassSet, ClassSets
from .heatmap import class_heatmaps
from .limits import ServeLimits
from .multipart import UploadedFile
from .uploads import PreparedImage, prepare_image


@dataclass
class StudyPrediction:
    probabilities: np.ndarray  # [K], the study's
    used: list[int]  # indices of the images that were scored, in scoring order
    heatmaps: np.ndarray  # [K, len(used), h, w], per class scaled so the study's max is 1
    aggregation: str  # fusion (stage 2) or max (stage 1: max over images)
    method: str = "attention"  # attention | gradcam | hirescam | groupcam (chexfusion.explain.cam)
    mapped: list[int] | None = None  # the classes that have a map (None: every class)


class StudyEngine:
    """A loaded predictor plus what the demo needs around it (groups, heat map queries, locks)."""

    def __init__(self, predictor, limits: ServeLimits, run_name: str):
        self.predictor, self.limits, self.run_name = predictor, limits, run_name
        self.kind = predictor.kind
        self.class_sets = ClassSets(predictor)  # the run's own classes, or names a request asks for
        self.classes = self.class_sets.own.names
        self.max_images = predictor.max_images  # None: stage 1 has no cap
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
        tensors, views = [im.tensor for im in images], [im.view for im in images]
        with self._model_lock:
            # always with attention: one forward path, so a study scores the same whichever map is asked for
            result = self.predictor.predict_study(tensors, views, classes=chosen.named, attention=True)
            if method == "attention":
                maps, mapped = class_heatmaps(torch.from_numpy(result.attention), chosen.query_index), None
            else:  # gradients: outside inference mode, still under the lock and with the chosen classes
                from ..explain.serve_maps import study_cam_maps  # explain reads serve.heatmap: import late

                batch = torch.stack([tensors[i] for i in result.used])
                with self.predictor.scoring(chosen.named):
                    maps, mapped = study_cam_maps(self._explained(), method, batch,
                                                  [views[i] for i in result.used], result.probabilities)
        return StudyPrediction(result.probabilities, result.used, maps, result.aggregation, method, mapped)

    def _explained(self):
        if self._explained_model is None:
            from ..errors import UserError
            from ..explain.models import explained_model
            from .limits import UNPROCESSABLE, Rejected

            try:
                self._explained_model = explained_model(self.predictor)
            except UserError as exc:  # an ensemble: no single model to take gradients of
                raise Rejected(UNPROCESSABLE, str(exc)) from None
        return self._explained_model
