"""Depth of every backbone parameter, for layer-wise learning-rate decay (``train.layer_decay``).

BEiT's recipe, as timm implements it (``timm.optim.param_groups_layer_decay``): parameters are
grouped by depth (stem 0, block i, final norm last) with a ``group_matcher`` of regular
expressions, and a group at depth d of a backbone with L groups learns at
``lr * layer_decay ** (L - d)``; the head above the backbone learns at ``lr``. Each encoder family
gives its groups through a ``layer_ids()`` method; timm's ``group_parameters`` does the matching,
for timm models with their own ``group_matcher`` and for the other families with the patterns
written next to their module.
"""

from __future__ import annotations

from torch import nn


def layer_ids(module: nn.Module, matcher: dict, prefix: str = "") -> dict[str, int]:
    """``{prefix + parameter name: depth}`` of ``module`` under a timm-style ``matcher`` (unmatched: deepest)."""
    from timm.models import group_parameters

    return {prefix + name: int(depth) for name, depth in group_parameters(module, matcher, reverse=True).items()}


def vit_matcher(stem: str, blocks: str, final: str) -> dict:
    """A ViT's groups: the embeddings, one per numbered block, the final norm with the last block's successors."""
    return {"stem": stem, "blocks": [(blocks, None), (final, (99999,))]}
