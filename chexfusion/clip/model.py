"""The contrastive image-report model, and a ``clip`` run folder written and rebuilt.

Two towers map into one shared space, as in CLIP / ConVIRT / CheXzero: the image tower is any timm backbone
(its final map averaged over positions), the text tower any Hugging Face encoder (its last hidden states pooled
over the real tokens, or its first token), each followed by a linear projection; both embeddings are
L2-normalised and compared by cosine times the learned logit scale ``exp(t)`` (CLIP: ``t`` starts at
``log(1 / 0.07)`` and is capped so that the scale stays at most 100).

A run folder holds the text tower's architecture and tokenizer files under ``text_encoder/`` (its fine-tuned
weights are in ``model.safetensors`` with everything else), so it rebuilds after the encoder's own folder is gone.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import from_dict, read_yaml
from ..errors import UserError
from ..models.backbone import create_backbone
from ..models.hf_encoder import load_quietly
from ..run_folder import checked_weights, load_weights, read_run_info
from ..run_folder import write_run_info as write_info
from ..text.encoder import IDENTITY_PATTERNS, WEIGHT_PATTERNS, resolve_text_encoder
from .config import ClipConfig

TEXT_FOLDER = "text_encoder"
MAX_LOGIT_SCALE = 100.0  # CLIP clips the learned scale here


class ContrastiveModel(nn.Module):
    """``encode_images`` / ``encode_texts``: unit-length embeddings in the shared space; ``logit_scale()``."""

    def __init__(self, backbone: nn.Module, text_model: nn.Module, embed_dim: int, pooling: str,
                 init_temperature: float, text_frozen: bool = False):
        """``text_frozen``: the text tower keeps its pretrained weights (no gradient, no dropout: only its
        projection learns), as LiT locks one tower (Zhai et al. 2022); a step then costs the text tower's
        forward pass only."""
        super().__init__()
        self.backbone, self.text_model, self.pooling = backbone, text_model, pooling
        self.image_projection = nn.Linear(backbone.num_features, embed_dim, bias=False)
        self.text_projection = nn.Linear(int(text_model.config.hidden_size), embed_dim, bias=False)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.text_frozen = text_frozen
        if text_frozen:
            self.text_model.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.text_frozen:
            self.text_model.eval()
        return self

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def text_map_parameters(self):
        """The pretrained text tower: it learns at ``train.lr * model.text_lr_scale`` (``training.optim``)."""
        return list(self.text_model.parameters())

    def encode_images(self, images: torch.Tensor, owner: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, C, H, W]`` images -> ``[B, D]``; ``owner[i]``: the study of image ``i`` (a study's embedding is
        the mean of its images' before normalising); None: one study per image."""
        features = self.image_projection(self.backbone(images).float().mean(dim=(2, 3)))
        if owner is not None:
            count = int(owner.max()) + 1
            pooled = features.new_zeros(count, features.shape[1]).index_add(0, owner, features)
            features = pooled / torch.bincount(owner, minlength=count).clamp(min=1).unsqueeze(1).to(features)
        return F.normalize(features, dim=-1)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.text_frozen):
            hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def forward(self, image, owner, input_ids, attention_mask):
        return self.encode_images(image, owner), self.encode_texts(input_ids, attention_mask)


def build_clip_model(cfg: ClipConfig, text_model: nn.Module) -> ContrastiveModel:
    """The model to train: a fresh (or pretrained, or stage-1-initialised) image tower and ``text_model``."""
    m = cfg.model
    backbone = create_backbone(m.backbone, pretrained=m.pretrained, checkpoint_path=m.checkpoint_path,
                               drop_path_rate=m.drop_path_rate)
    if m.init_run:
        init_from_stage1(backbone, m.init_run, m.backbone)
    return ContrastiveModel(backbone, text_model, m.embed_dim, m.text_pooling, m.init_temperature,
                            text_frozen=m.text_lr_scale == 0)


def init_from_stage1(backbone: nn.Module, run_dir: str, backbone_name: str) -> None:
    """Start the image tower from a stage-1 run's backbone weights (the same timm architecture)."""
    from ..stage1.model import load_stage1_run

    run = load_stage1_run(run_dir)
    if run.info.get("backbone") != backbone_name:
        raise UserError(f"config key 'model.init_run': {run_dir} trained backbone '{run.info.get('backbone')}', "
                        f"not model.backbone '{backbone_name}'")
    backbone.load_state_dict(run.model.backbone.state_dict())


def text_tokenizer(folder: str | Path):
    """The tokenizer of a text encoder folder, offline (a folder transformers cannot read: one line)."""
    import transformers

    return load_quietly(f"the text encoder in {folder}", lambda: transformers.AutoTokenizer.from_pretrained(
        str(folder), local_files_only=True))


def text_model(folder: str | Path, pretrained: bool = True):
    """The text tower: the folder's weights, or (a run folder's architecture files) its untrained architecture."""
    import transformers

    if pretrained:
        return load_quietly(f"the text encoder in {folder}", lambda: transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32))
    config = load_quietly(f"the text encoder files {folder}", lambda: transformers.AutoConfig.from_pretrained(
        str(folder), local_files_only=True))
    return transformers.AutoModel.from_config(config)


def text_folder(encoder: str) -> str:
    """The configured text encoder's folder (``minilm``, a folder or a cached id; one line when absent)."""
    return resolve_text_encoder(encoder)


def copy_text_files(src: str | Path, run_dir: Path) -> None:
    """The text tower's architecture and tokenizer files (not its weights) into ``run_dir/text_encoder``."""
    dst = run_dir / TEXT_FOLDER
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    weights = {p for pattern in WEIGHT_PATTERNS for p in Path(src).glob(pattern)}
    for pattern in IDENTITY_PATTERNS:
        for path in Path(src).glob(pattern):
            if path.is_file() and path not in weights:
                shutil.copy(path, dst / path.name)


def write_clip_run_info(run_dir: Path, cfg: ClipConfig, classes: list[str], prevalence, pre, text_folder) -> None:
    copy_text_files(text_folder, run_dir)
    write_info(run_dir, {
        "kind": "clip", "name": cfg.name, "classes": list(classes),
        "train_prevalence": [float(p) for p in prevalence], "preprocess": pre.to_dict(),
        "backbone": cfg.model.backbone, "text_encoder": TEXT_FOLDER, "text_pooling": cfg.model.text_pooling,
        "embed_dim": cfg.model.embed_dim, "views": cfg.data.views,
        "prompts": {"templates": list(cfg.prompts.templates), "negative_templates":
                    list(cfg.prompts.negative_templates), "synonyms": bool(cfg.prompts.synonyms)},
        "weights": "model.safetensors"})


class ClipRun:
    """A trained clip run: its record, model (eval mode), tokenizer and the prompt setup it validated with."""

    def __init__(self, path: Path, config: ClipConfig, info: dict, model: ContrastiveModel, tokenizer):
        self.path, self.config, self.info, self.model, self.tokenizer = path, config, info, model, tokenizer

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def preprocess(self):
        from ..data.images import Preprocess

        return Preprocess.from_dict(self.info["preprocess"])

    @property
    def train_prevalence(self):
        import numpy as np

        return np.asarray(self.info["train_prevalence"], dtype=np.float64)


def load_clip_run(run_dir: str | Path, map_location: str = "cpu") -> ClipRun:
    """Rebuild a trained clip model from its folder alone (checked before anything is built)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir, "clip")
    weights = checked_weights(run_dir, info)
    cfg = from_dict(ClipConfig, read_yaml(run_dir / "config.yaml"))
    folder = run_dir / info["text_encoder"]
    tokenizer = text_tokenizer(folder)
    backbone = create_backbone(cfg.model.backbone, pretrained=False)
    model = ContrastiveModel(backbone, text_model(folder, pretrained=False), cfg.model.embed_dim,
                             info["text_pooling"], cfg.model.init_temperature, cfg.model.text_lr_scale == 0)
    load_weights(model, weights)
    return ClipRun(run_dir, cfg, info, model.eval().to(map_location), tokenizer)
