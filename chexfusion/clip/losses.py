"""The two terms of a clip run's loss: symmetric InfoNCE (``L_c``) and CXR-CML's triplet term (``L_m``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss over a batch of ``B`` matched pairs (unit embeddings ``[B, D]``): the cross-entropy
    of each image against all the batch's reports and of each report against all its images, averaged
    (Radford et al. 2021; ConVIRT, Zhang et al. 2022, eq. 2-3, with both directions weighted 1/2)."""
    logits = logit_scale * images @ texts.T
    target = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def cluster_triplet_loss(embeddings: torch.Tensor, clusters: torch.Tensor, margin: float) -> torch.Tensor:
    """CXR-CML's metric term ``L_m``: a triplet loss whose positives share the anchor's cluster and whose
    negatives do not, ``mean_a max(0, d(a, p) - d(a, n) + margin)`` over squared Euclidean distances of the unit
    embeddings, with the hardest pair of each anchor in the batch (its farthest positive, its nearest negative:
    batch-hard mining, Hermans et al. 2017). Anchors without a positive or a negative in the batch do not count;
    a batch with none gives 0 (with a gradient path, so the step stays the same shape)."""
    distance = (2 - 2 * embeddings @ embeddings.T).clamp(min=0)  # |a - b|^2 of unit vectors, smooth at a = b
    same = clusters.unsqueeze(0) == clusters.unsqueeze(1)
    eye = torch.eye(len(clusters), dtype=torch.bool, device=embeddings.device)
    positive, negative = same & ~eye, ~same
    usable = positive.any(dim=1) & negative.any(dim=1)
    if not usable.any():
        return embeddings.sum() * 0.0
    hardest_positive = distance.masked_fill(~positive, float("-inf")).max(dim=1).values
    hardest_negative = distance.masked_fill(~negative, float("inf")).min(dim=1).values
    return F.relu(hardest_positive - hardest_negative + margin)[usable].mean()
