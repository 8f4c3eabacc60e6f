"""A loaded run seen the way the heat-map methods need it: images -> feature maps -> logits, per scored unit.

The unit a model scores is an image for a stage-1 run (each image alone) and
the study for a stage-2 run (all its images through the frozen backbone(s) of
their views, the fusion Transformer, one logit vector). Grad-CAM and Group-CAM
(:mod:`.cam`) only need three things from either: the backbone maps of a
study's images, the logits as a differentiable function of those maps, and the
logits of whole perturbed studies. Both adapters take the models a predictor
already loaded (``load_predictor(path).model`` and, for stage 2, the
routed backbones ``.routed``), so they do not depend on how predictions are batched.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.views import VIEW_INDEX
from ..errors import UserError
from ..feature_store.routing import cached_features, route_view
from ..serve.heatmap import query_of_class


class Stage1Explained:
    """Each image is its own unit: logits ``[N, K]`` for ``N`` images."""

    per_image = True

    def __init__(self, predictor):
        self.model, self.device = predictor.model, predictor.device
        self.classes, self.preprocess = list(predictor.classes), predictor.preprocess
        self.query_index = query_of_class(self.model.decoder, len(self.classes))
        self.max_images = None

    def feature_maps(self, images: Tensor, views: list[str]) -> Tensor:
        return self.model.forward_features(images.to(self.device))

    def logits_from_maps(self, maps: Tensor, views: list[str]) -> Tensor:
        return self.model.classify_map(maps).float()

    def logits(self, images: Tensor, views: list[str]) -> Tensor:
        """``[B, N, 3, H, W]`` (B perturbed copies of one study) -> ``[B, N, K]``."""
        b, n = images.shape[:2]
        return self.model(images.flatten(0, 1).to(self.device)).float().unflatten(0, (b, n))

    def attention(self, images: Tensor, views: list[str]) -> Tensor:
        """Decoder cross-attention ``[Q, N, h, w]`` (averaged over heads and layers)."""
        maps = self.feature_maps(images, views)
        _, attention = self.model.classify_map(maps, return_attention=True)
        return attention.float().unflatten(2, tuple(maps.shape[-2:])).transpose(0, 1)


class Stage2Explained:
    """The study is the unit: logits ``[1, K]`` from all ``N`` images (at most the run's ``max_images``)."""

    per_image = False

    def __init__(self, predictor):
        self.model, self.device = predictor.model, predictor.device
        routed = predictor.routed  # feature_store.routing.RoutedBackbones: the store's routing, pooling, dtype
        self.backbones = routed.backbones
        self.classes, self.preprocess = list(predictor.classes), predictor.preprocess
        self.query_index = query_of_class(self.model.decoder, len(self.classes))
        self.routing, self.unknown_view = routed.routing, routed.unknown_view
        self.pool, self.dtype, self.max_images = routed.pool, routed.dtype, predictor.max_images

    def feature_maps(self, images: Tensor, views: list[str]) -> Tensor:
        """Each image through the backbone of its view, as the feature store routed it: ``[N, C, h, w]``."""
        images = images.to(self.device)
        slots = [route_view(v, self.routing, self.unknown_view) for v in views]
        parts, order = [], []
        for slot in sorted(set(slots)):
            idx = [i for i, s in enumerate(slots) if s == slot]
            parts.append(self.backbones[slot](images[idx]))
            order.extend(idx)
        maps = torch.cat(parts)
        return maps[torch.from_numpy(np.argsort(order)).to(maps.device)]

    def _fuse(self, maps: Tensor, views: list[str], copies: int) -> Tensor:
        """``[copies * N, C, h, w]`` backbone maps -> study logits ``[copies, 1, K]``."""
        feats = cached_features(maps, self.pool, self.dtype)
        feats = feats.unflatten(0, (copies, len(views)))
        view_index = torch.tensor([[VIEW_INDEX[v] for v in views]] * copies, device=feats.device)
        mask = torch.ones(view_index.shape, dtype=torch.bool, device=feats.device)
        return self.model(feats, view_index, mask).float()[:, None, :]

    def logits_from_maps(self, maps: Tensor, views: list[str]) -> Tensor:
        return self._fuse(maps, views, 1)[0]

    def logits(self, images: Tensor, views: list[str]) -> Tensor:
        b = images.shape[0]
        return self._fuse(self.feature_maps(images.flatten(0, 1), views * b), views, b)

    def attention(self, images: Tensor, views: list[str]) -> Tensor:
        feats = cached_features(self.feature_maps(images, views), self.pool, self.dtype)
        view_index = torch.tensor([[VIEW_INDEX[v] for v in views]], device=feats.device)
        mask = torch.ones(view_index.shape, dtype=torch.bool, device=feats.device)
        _, attention = self.model(feats[None], view_index, mask, return_attention=True)
        return self.model.attention_maps(attention.float())[0]


def explained_model(predictor):
    """The adapter for a predictor of either kind (``chexfusion.inference.load_predictor``); an ensemble has no
    single model to take gradients of."""
    if predictor.kind == "ensemble":
        raise UserError("heat maps are made of one run: give one of the ensemble's members (its members/<i> folder)")
    return Stage2Explained(predictor) if predictor.kind == "stage2" else Stage1Explained(predictor)
