"""The stage-2 configuration: data, the feature store it reads, the fusion model, loss and optimisation."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_ranges
from ..errors import UserError
from ..feature_store.config import FeatureConfig
from ..models.head_config import HeadKeys
from ..stage1.config import LossConfig
from ..training import OptimConfig


@dataclass
class Stage2DataConfig:
    image_root: str = "data/demo"
    train_csv: str = "data/demo/train.csv"
    val_csv: str = "data/demo/development.csv"
    test_csv: str | None = "data/demo/test.csv"
    classes: list[str] | None = None  # None: the classes of the stage-1 run(s)
    uncertain_label: str = "zero"
    blank_label: str = "zero"


@dataclass
class FusionConfig(HeadKeys):
    dim: int = 256
    projection: str = "conv3x3s2"  # CheXFusion: 3x3 stride-2 conv per view | conv1x1 | linear
    layers: int = 2
    heads: int = 8
    ff_dim: int = 1024
    dropout: float = 0.1
    max_images: int = 16  # images kept per study (frontal first, then lateral, then unknown)
    position_embedding: bool = False  # learned embedding of an image's index in the study (breaks order invariance)


@dataclass
class Stage2Config:
    name: str = "demo"
    output_dir: str = "stage2/runs"
    seed: int = 0
    data: Stage2DataConfig = field(default_factory=Stage2DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: FusionConfig = field(default_factory=FusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=20, batch_size=32, lr=5e-4))

    def validate(self) -> None:
        self.features.validate()
        self.train.validate()
        for key in ("uncertain_label", "blank_label"):
            if getattr(self.data, key) not in ("zero", "one", "ignore"):
                raise UserError(f"config key 'data.{key}' must be zero, one or ignore")
        check_ranges("model", self.model, {"dim": 1, "layers": 1, "heads": 1, "ff_dim": 1, "max_images": 1},
                     fractions=("dropout",))
        self.model.validate_head()
        self.model.check_head_kind(("ml_decoder", "linear"))
