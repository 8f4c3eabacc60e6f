"""Heat maps of one finding over the images of a study: Grad-CAM, Group-CAM, HiResCAM and the decoder's attention.

Every method returns a non-negative map per image at the model's input size
``[N, H, W]`` (float32, not normalised: localisation scores are scale-free,
overlays normalise for display).

- **Grad-CAM** (Selvaraju et al. 2017): the backbone map ``A`` weighted per
  channel by the spatial mean of d logit / d A, summed over channels, ReLU.
  For a stage-2 run the logit is the *study's* and the gradient flows back
  through the fusion Transformer to the map of every image, so each image gets
  the share of the study's evidence it holds.
- **Group-CAM** (Zhang et al. 2021, "Group-CAM: group score-weighted visual
  explanations"): the Grad-CAM-weighted channels are split into ``groups``
  contiguous groups; each group's sum (ReLU, values under its 70th percentile
  set to 0: the paper's denoising) is upsampled to a mask ``M``; the model
  scores the input kept where ``M`` is high and blurred elsewhere
  (``X * M + blur(X) * (1 - M)``), and the map is ``ReLU(sum_g (p_g - p_blur) M_g)``.
  ``p`` is the sigmoid probability of the finding (the tasks are multi-label,
  the paper's softmax does not apply). For a study the masks of all its images
  are kept or blurred together and normalised over the study, so a group that
  fires on one view only shows that view.
- **HiResCAM** (Draelos & Carin 2020): the backbone map times d logit / d map
  element by element, summed over channels, ReLU. Grad-CAM's spatial mean of
  the gradient is exact only for a head that averages the map over space and
  then scores it linearly; an ML-Decoder reads the map through attention, so
  the gradient sits on the cells the query attends to, and its mean weights
  channels by where they are large, not by where the head reads them. HiResCAM
  keeps the gradient where it is.
- **attention**: the ML-Decoder's cross-attention of the finding's query,
  averaged over heads and layers (what the web demo shows).

What was used and what was written: the ``grad-cam`` package
(pytorch-grad-cam 1.5) was checked first. It has Grad-CAM and many relatives
(HiResCAM among them) but no Group-CAM, it scores one output per input in a batch (a study is
``N`` images and one output), and it rescales every map to [0, 1] per image,
which loses which view of a study a finding's evidence is on. The methods are
therefore written here on ``torch.autograd.grad`` (a few lines each, no new
dependency); the blur is torchvision's ``gaussian_blur`` (kernel and sigma
scaled from the paper's 51 px / 50 at 224 px).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

METHODS = ("attention", "gradcam", "groupcam", "hirescam")
GROUPS = 32  # the paper's default
DENOISE_PERCENTILE = 70.0  # the paper's: each group mask keeps its top 30 %
GROUP_BATCH = 16  # perturbed studies per forward pass


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``[N, h, w]`` -> ``[N, H, W]`` bilinear, as the web demo draws the coarse maps."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _map_and_gradient(model, images: Tensor, views: list[str], class_index: int) -> tuple[Tensor, Tensor]:
    """The backbone maps ``A`` and d logit / d ``A``, both ``[N, C, h, w]`` and detached."""
    with torch.no_grad():
        maps = model.feature_maps(images, views).float()
    maps.requires_grad_(True)
    with torch.enable_grad():
        logits = model.logits_from_maps(maps, views)  # [U, K]
        (grads,) = torch.autograd.grad(logits[:, class_index].sum(), maps)
    # per image (stage 1) a sum over units touches each image's own logit only; per study it is the study's one
    return maps.detach(), grads


def _weighted_channels(model, images: Tensor, views: list[str], class_index: int) -> Tensor:
    """Grad-CAM's ``alpha_c * A_c``: ``[N, C, h, w]``, detached."""
    maps, grads = _map_and_gradient(model, images, views, class_index)
    return grads.mean(dim=(2, 3), keepdim=True) * maps


def hires_cam(model, images: Tensor, views: list[str], class_index: int) -> Tensor:
    """HiResCAM maps ``[N, H, W]``: the gradient times the map cell by cell (no spatial mean), summed, ReLU."""
    maps, grads = _map_and_gradient(model, images, views, class_index)
    return upsample(F.relu((grads * maps).sum(dim=1)), images.shape[-2:]).cpu()


def grad_cam(model, images: Tensor, views: list[str], class_index: int) -> Tensor:
    """Grad-CAM maps ``[N, H, W]`` of class ``class_index`` for the images of one unit (an image or a study)."""
    weighted = _weighted_channels(model, images, views, class_index)
    return upsample(F.relu(weighted.sum(dim=1)), images.shape[-2:]).cpu()


def blur_kernel(size: int) -> tuple[int, float]:
    """Kernel size (odd) and sigma of the baseline blur, scaled from the paper's 51 / 50 at 224 px."""
    kernel = max(3, int(round(51 * size / 224)) | 1)
    return kernel, 50.0 * size / 224


def _group_masks(weighted: Tensor, groups: int, size: tuple[int, int], per_image: bool) -> tuple[Tensor, Tensor]:
    """Raw upsampled group maps ``[G, N, H, W]`` and the same min-max normalised per unit (the blending masks)."""
    chunks = weighted.chunk(min(groups, weighted.shape[1]), dim=1)
    raw = []
    for chunk in chunks:
        m = F.relu(chunk.sum(dim=1))  # [N, h, w]
        flat = m.flatten(1) if per_image else m.flatten()[None]
        cut = torch.quantile(flat, DENOISE_PERCENTILE / 100, dim=1)
        cut = cut.view(-1, 1, 1) if per_image else cut.view(1, 1, 1)
        raw.append(upsample(torch.where(m > cut, m, torch.zeros_like(m)), size))
    raw = torch.stack(raw)  # [G, N, H, W]
    dims = (2, 3) if per_image else (1, 2, 3)
    low, high = raw.amin(dim=dims, keepdim=True), raw.amax(dim=dims, keepdim=True)
    span = high - low
    masks = torch.where(span > 0, (raw - low) / span.clamp_min(1e-12), torch.zeros_like(raw))
    return raw, masks


@torch.no_grad()
def group_cam(model, images: Tensor, views: list[str], class_index: int, groups: int = GROUPS) -> Tensor:
    """Group-CAM maps ``[N, H, W]`` of class ``class_index`` for the images of one unit (see the module doc)."""
    size = tuple(images.shape[-2:])
    weighted = _weighted_channels(model, images, views, class_index)
    raw, masks = _group_masks(weighted, groups, size, model.per_image)
    images = images.to(masks.device).float()
    kernel, sigma = blur_kernel(max(size))
    blurred = gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    base = torch.sigmoid(model.logits(blurred[None], views)[0, :, class_index])  # [U]
    saliency = torch.zeros((len(views), *size), device=masks.device)
    for start in range(0, masks.shape[0], GROUP_BATCH):
        m = masks[start:start + GROUP_BATCH, :, None]  # [B, N, 1, H, W]
        kept = images[None] * m + blurred[None] * (1 - m)
        gain = torch.sigmoid(model.logits(kept, views)[:, :, class_index]) - base  # [B, U]
        saliency += (gain[:, :, None, None] * raw[start:start + GROUP_BATCH]).sum(dim=0)
    return F.relu(saliency).cpu()


@torch.no_grad()
def attention_maps(model, images: Tensor, views: list[str], class_indices: list[int]) -> Tensor:
    """The decoder's attention ``[len(class_indices), N, H, W]`` (one forward pass for all classes)."""
    per_query = model.attention(images, views)  # [Q, N, h, w]
    chosen = per_query[np.asarray(model.query_index)[class_indices]]
    return torch.stack([upsample(m, images.shape[-2:]) for m in chosen]).clamp_min(0).cpu()


@torch.no_grad()
def map_grid(model, images: Tensor, views: list[str]) -> tuple[int, int]:
    """The ``(h, w)`` cells every method's map is made of: the backbone map's (stage-2 attention is put on it)."""
    return tuple(model.feature_maps(images[:1], views[:1]).shape[-2:])


def heat_maps(model, method: str, images: Tensor, views: list[str], class_indices: list[int]) -> Tensor:
    """``[len(class_indices), N, H, W]`` maps by ``method`` (one of :data:`METHODS`)."""
    if method == "attention":
        return attention_maps(model, images, views, class_indices)
    one = {"gradcam": grad_cam, "groupcam": group_cam, "hirescam": hires_cam}[method]
    return torch.stack([one(model, images, views, k) for k in class_indices])
