"""Layer-wise learning-rate decay (train.layer_decay) for a stage-1 backbone: BEiT's recipe over the encoder's depth.

Tiny models only: a timm ViT with its own group_matcher, and the hf: / open_clip: encoders of
tests/test_foundation_encoders.py (DINOv2; CheXzero's OpenAI-CLIP layout).
"""

from __future__ import annotations

import re

import pytest
import torch
from test_foundation_encoders import save_chexzero, save_dinov2

from chexfusion.errors import UserError
from chexfusion.models.backbone import create_backbone
from chexfusion.models.image_classifier import ImageClassifier
from chexfusion.training import param_groups
from chexfusion.training.config import OptimConfig

HEAD = dict(dim=16, num_layers=1, num_heads=2, ff_dim=32, dropout=0.0)
LR, WD = 1e-3, 0.05


def tiny_vit() -> ImageClassifier:
    backbone = create_backbone("vit_tiny_patch16_224", img_size=32, depth=3, embed_dim=16, num_heads=2)
    return ImageClassifier(backbone, 3, HEAD)


def lr_of(groups: list[dict], model: torch.nn.Module) -> dict[str, float]:
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if p.requires_grad}


def test_layer_decay_one_gives_the_groups_without_it():
    """1.0 is off: two groups, decayed weights then biases / norms / exempt embeddings, all at lr."""
    model = tiny_vit()
    groups = param_groups(model, WD, LR, layer_decay=1.0)
    exempt = {"backbone.model.pos_embed", "backbone.model.cls_token"}  # the ViT's no_weight_decay()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [(g["weight_decay"], g["lr"]) for g in groups] == [(WD, LR), (0.0, LR)]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for n, p in named if p.ndim > 1 and n not in exempt]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for n, p in named if p.ndim <= 1 or n in exempt]
    assert [(g["weight_decay"], g["lr"], len(g["params"])) for g in param_groups(model, WD, LR)] == \
        [(g["weight_decay"], g["lr"], len(g["params"])) for g in groups]


def test_deeper_timm_blocks_learn_faster_and_the_head_at_lr():
    model = tiny_vit()
    rates = lr_of(param_groups(model, WD, LR, layer_decay=0.5), model)
    # timm's ViT groups: stem (patch / position embeddings) 0, blocks.i i + 1, final norm with the last block;
    # the backbone has 4 groups, the head is one above: depth d learns at lr * 0.5 ** (4 - d)
    assert rates["backbone.model.patch_embed.proj.weight"] == pytest.approx(LR * 0.5 ** 4)
    for block in range(3):
        assert rates[f"backbone.model.blocks.{block}.mlp.fc1.weight"] == pytest.approx(LR * 0.5 ** (3 - block))
    assert rates["backbone.model.norm.weight"] == pytest.approx(LR * 0.5)
    head = {lr for name, lr in rates.items() if not name.startswith("backbone.")}
    assert head == {LR}
    def decay_of(groups):
        return {id(p): g["weight_decay"] for g in groups for p in g["params"]}

    assert decay_of(param_groups(model, WD, LR, layer_decay=0.5)) == decay_of(param_groups(model, WD, LR))


@pytest.mark.parametrize("family", ["hf", "open_clip"])
def test_deeper_encoder_blocks_learn_faster(family, tmp_path):
    if family == "hf":
        folder = save_dinov2(tmp_path / "dino", layers=3)
        block, embed, final = r"backbone\.tower\.encoder\.layer\.(\d+)\.", "backbone.tower.embeddings.", \
            "backbone.tower.layernorm.weight"
    else:
        folder = save_chexzero(tmp_path / "chexzero", layers=3)
        block, embed, final = r"backbone\.visual\.transformer\.resblocks\.(\d+)\.", "backbone.visual.conv1.", \
            "backbone.visual.ln_post.weight"
    model = ImageClassifier(create_backbone(f"{family}:{folder}", pretrained=True), 3, HEAD)
    rates = lr_of(param_groups(model, WD, LR, layer_decay=0.75), model)
    by_block: dict[int, set[float]] = {}
    for name, lr in rates.items():
        found = re.match(block, name)
        if found:
            by_block.setdefault(int(found.group(1)), set()).add(lr)
    assert all(len(lrs) == 1 for lrs in by_block.values())  # one rate per block
    ordered = [by_block[i].pop() for i in sorted(by_block)]
    assert len(ordered) == 3 and ordered == sorted(ordered) and len(set(ordered)) == 3
    embeddings = {lr for name, lr in rates.items() if name.startswith(embed)}
    assert embeddings and max(embeddings) < ordered[0]  # the stem below the first block
    assert rates[final] > ordered[-1] * 0.999 and rates[final] < LR  # the final norm: last backbone group
    assert {lr for name, lr in rates.items() if not name.startswith("backbone.")} == {LR}


def test_layer_decay_is_refused_out_of_range_and_without_a_backbone():
    from chexfusion.models.fusion import FusionEncoder, StudyFusion

    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match=r"train.layer_decay' must be in \(0, 1\]"):
            OptimConfig(layer_decay=bad).validate()
    fusion = StudyFusion(num_classes=5, in_channels=8, feature_hw=(2, 2),
                         encoder=FusionEncoder(dim=16, num_heads=4, ff_dim=32))
    with pytest.raises(UserError, match="train.layer_decay applies to a stage-1 backbone"):
        param_groups(fusion, WD, LR, layer_decay=0.8)
