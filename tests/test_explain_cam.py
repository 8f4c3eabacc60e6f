"""Grad-CAM, Group-CAM and attention maps: on toy models whose answer is known, and on real tiny runs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from chexfusion.explain.cam import attention_maps, grad_cam, group_cam, heat_maps, hires_cam
from chexfusion.explain.models import explained_model
from chexfusion.inference import load_predictor

SIZE, GRID = 64, 8  # 8x8 feature cells of 8x8 pixels


class QuadrantModel:
    """Feature channel ``c`` is the mean brightness of cell ``c`` (and 0 elsewhere): a backbone that keeps where
    things are.

    Class 0 reads the top-left quadrant of the first image only, class 1 the bottom-right quadrant of the last
    image only. ``per_image=False``: the images form one unit (a study), like a stage-2 run; ``True``: each image
    is scored alone, like stage 1, each by its own quadrant rule.
    """

    def __init__(self, per_image: bool):
        self.per_image = per_image
        self.max_images = None
        quadrant = torch.zeros(GRID, GRID)
        quadrant[: GRID // 2, : GRID // 2] = 1
        self.reads = torch.stack([quadrant, quadrant.flip(0, 1)])  # [2, GRID, GRID]

    def feature_maps(self, images, views):
        cells = F.avg_pool2d(images.mean(dim=1, keepdim=True), SIZE // GRID)  # [N, 1, G, G]
        return cells * torch.eye(GRID * GRID).view(GRID * GRID, GRID, GRID)[None]

    def logits_from_maps(self, maps, views):
        pooled = maps.sum(dim=(2, 3))  # [N, channels]: global pooling, then a linear map, as a CNN classifier
        scores = 8 * pooled @ self.reads.flatten(1).T / self.reads[0].abs().sum() - 1.0
        if self.per_image:
            return scores
        return torch.stack([scores[0, 0], scores[-1, 1]])[None]

    def logits(self, images, views):
        """``[B, N, 3, H, W]`` copies of the study -> ``[B, units, K]``."""
        return torch.stack([self.logits_from_maps(self.feature_maps(copy, views), views) for copy in images])


def bright_study(n: int = 2) -> torch.Tensor:
    """Dark noisy images with the same bright square in every quadrant: only the rule says which one counts."""
    torch.manual_seed(0)
    images = 0.1 + 0.05 * torch.rand(n, 3, SIZE, SIZE)
    for top in (8, 40):
        for left in (8, 40):
            images[:, :, top:top + 8, left:left + 8] = 1.0
    return images


def quadrant_share(maps: torch.Tensor, image: int, rows: slice, cols: slice) -> float:
    total = maps.sum()
    return float(maps[image, rows, cols].sum() / total) if total > 0 else 0.0


TOP_LEFT = (slice(0, SIZE // 2), slice(0, SIZE // 2))
BOTTOM_RIGHT = (slice(SIZE // 2, SIZE), slice(SIZE // 2, SIZE))


def test_group_cam_and_grad_cam_find_the_quadrant_the_model_reads_in_a_study():
    model, images = QuadrantModel(per_image=False), bright_study()
    for method in (group_cam, grad_cam):
        first = method(model, images, ["frontal", "lateral"], 0)
        assert first.shape == (2, SIZE, SIZE) and bool((first >= 0).all())
        # everything on the first image's top-left quadrant (bilinear upsampling spills half a cell)
        assert quadrant_share(first, 0, *TOP_LEFT) > 0.9, method.__name__
        assert float(first[1].sum()) == 0.0, method.__name__
        peak = np.unravel_index(int(first.argmax()), first.shape)
        assert peak[0] == 0 and peak[1] < SIZE // 2 and peak[2] < SIZE // 2
        second = method(model, images, ["frontal", "lateral"], 1)
        assert quadrant_share(second, 1, *BOTTOM_RIGHT) > 0.9, method.__name__


class PlaceReadingModel(QuadrantModel):
    """One feature channel (each cell's brightness) read by *where* it is: the head weighs the top-left quadrant's
    cells only, as an attention head reads the cells its query attends to. The channel is the same everywhere, so
    no channel weight can say where the model reads: Grad-CAM's spatial mean of the gradient cannot, HiResCAM can."""

    def feature_maps(self, images, views):
        return F.avg_pool2d(images.mean(dim=1, keepdim=True), SIZE // GRID)  # [N, 1, G, G]

    def logits_from_maps(self, maps, views):
        scores = (maps[:, 0, None] * self.reads[None]).sum(dim=(2, 3)) / self.reads[0].sum()  # [N, 2]
        return scores if self.per_image else torch.stack([scores[0, 0], scores[-1, 1]])[None]


def test_hires_cam_finds_where_a_head_reads_a_channel_where_grad_cam_cannot():
    model, images = PlaceReadingModel(per_image=True), bright_study(1)
    hires, grad = hires_cam(model, images, ["frontal"], 0), grad_cam(model, images, ["frontal"], 0)
    assert hires.shape == (1, SIZE, SIZE) and bool((hires >= 0).all())
    assert quadrant_share(hires, 0, *TOP_LEFT) > 0.9
    assert quadrant_share(grad, 0, *TOP_LEFT) < 0.4  # the bright squares of every quadrant alike
    study = PlaceReadingModel(per_image=False)
    second = hires_cam(study, bright_study(), ["frontal", "lateral"], 1)
    assert quadrant_share(second, 1, *BOTTOM_RIGHT) > 0.9 and float(second[0].sum()) == 0.0


def test_group_cam_scores_each_image_alone_when_the_model_does():
    model, images = QuadrantModel(per_image=True), bright_study(3)
    maps = group_cam(model, images, ["frontal"] * 3, 0)
    for i in range(3):  # every image is its own unit: each gets its own top-left map
        assert quadrant_share(maps[i:i + 1], 0, *TOP_LEFT) > 0.9


def test_group_cam_gives_nothing_where_keeping_the_image_does_not_raise_the_score():
    model = QuadrantModel(per_image=False)
    model.reads = -model.reads  # brightness lowers the logit: no region supports the finding
    maps = group_cam(model, bright_study(), ["frontal", "frontal"], 0)
    assert float(maps.sum()) == 0.0


def test_real_runs_give_one_map_per_image_and_class(tiny_stage1, tiny_stage2, tiny_data):
    images = torch.randn(2, 3, 64, 64)
    for run in (tiny_stage1, tiny_stage2):
        model = explained_model(load_predictor(run, device="cpu"))
        for method in ("attention", "gradcam", "groupcam", "hirescam"):
            maps = heat_maps(model, method, images, ["frontal", "lateral"], [0, 3])
            assert maps.shape == (2, 2, 64, 64) and bool((maps >= 0).all()) and bool(torch.isfinite(maps).all())
        # one map per query and image on the backbone's grid (stage 2's tokens put on the cells they look at)
        with torch.no_grad():
            per_query = model.attention(images, ["frontal", "lateral"])  # [Q, N, h, w]
            grid = model.feature_maps(images, ["frontal", "lateral"]).shape[-2:]
        assert per_query.shape[1:] == (2, *grid) and bool((per_query >= 0).all())
        if model.per_image:  # the decoder's attention sums to one per query over the tokens of each image
            assert torch.allclose(per_query.sum(dim=(1, 2, 3)), torch.full((per_query.shape[0],), 2.0), atol=1e-4)
        # and the class's map is its query's, upsampled
        assert attention_maps(model, images, ["frontal", "lateral"], [0]).shape == (1, 2, 64, 64)
