"""The stage-1 configuration. Defaults are the laptop demo; ``stage1/cxr-lt.yaml`` is the full recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.augment import AugmentConfig
from ..errors import UserError
from ..training import OptimConfig

VIEW_FILTERS = ("all", "frontal", "lateral")


@dataclass
class DataConfig:
    image_root: str = "data/demo"
    train_csv: str = "data/demo/train.csv"
    val_csv: str = "data/demo/development.csv"
    test_csv: str | None = "data/demo/test.csv"  # evaluated once with the best weights, if given
    classes: list[str] | None = None  # None: every label column of the training CSV, in header order
    exclude_classes: list[str] = field(default_factory=list)  # held out of training (zero-shot protocol)
    uncertain_label: str = "zero"  # CheXpert-style -1: zero | one | ignore
    blank_label: str = "zero"  # blank cell: zero | one | ignore
    views: str = "all"  # train on all images, or only frontal / only lateral (per-view backbones)
    image_size: int = 128
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    skip_bad_images: bool = False


@dataclass
class ModelConfig:
    backbone: str = "convnext_atto"  # any timm model name
    pretrained: bool = False
    checkpoint_path: str | None = None  # local weights for `pretrained` (nothing is downloaded)
    drop_path_rate: float = 0.0
    decoder_dim: int = 256
    decoder_layers: int = 1
    decoder_heads: int = 8
    decoder_ff_dim: int = 1024
    decoder_dropout: float = 0.1
    decoder_groups: int | None = None  # None: one query per class up to 100
    queries: str = "learned"  # learned | text (label embeddings, see chexfusion.text)
    text_encoder: str | None = None  # transformers model name or folder, for queries: text


@dataclass
class LossConfig:
    name: str = "weighted_asl"  # bce | weighted_bce | focal | asl | weighted_asl | ral | reweighted
    params: dict = field(default_factory=dict)


@dataclass
class Stage1Config:
    name: str = "demo"
    output_dir: str = "stage1/runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta_hflip: bool = True  # average with the horizontally flipped image at evaluation

    def validate(self) -> None:
        if self.data.views not in VIEW_FILTERS:
            raise UserError(f"config key 'data.views' must be one of {list(VIEW_FILTERS)}, got '{self.data.views}'")
        for key in ("uncertain_label", "blank_label"):
            if getattr(self.data, key) not in ("zero", "one", "ignore"):
                raise UserError(f"config key 'data.{key}' must be zero, one or ignore")
        if self.model.queries not in ("learned", "text"):
            raise UserError("config key 'model.queries' must be learned or text")
        if self.model.queries == "text" and not self.model.text_encoder:
            raise UserError("config key 'model.text_encoder' is required when model.queries is text")
        if self.train.epochs < 1 or self.train.batch_size < 1:
            raise UserError("config keys 'train.epochs' and 'train.batch_size' must be at least 1")
