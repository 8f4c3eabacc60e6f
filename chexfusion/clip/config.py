"""The ``chexfusion clip`` configuration: defaults are the laptop demo (``stage1/clip.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_ranges
from ..data.augment import AugmentConfig
from ..errors import UserError
from ..training import OptimConfig

VIEW_MODES = ("sample", "pool")


@dataclass
class ClipDataConfig:
    image_root: str = "data/demo"
    train_csv: str = "data/demo/train.csv"
    val_csv: str = "data/demo/development.csv"
    test_csv: str | None = "data/demo/test.csv"  # scored by prompts once with the best weights, if given
    reports_csv: str = "data/demo/reports.csv"  # study_id, report (synth writes it)
    classes: list[str] | None = None  # the classes validation scores by prompt; None: the training CSV's
    exclude_classes: list[str] = field(default_factory=list)  # held out: not validated, their sentences removed
    skip_missing_reports: bool = False  # a study without a report: error (default), or skipped and counted
    views: str = "sample"  # sample: one image per study per epoch, from (seed, epoch) | pool: all its views
    image_size: int = 128
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    max_text_tokens: int = 128  # reports are truncated to this many tokens


@dataclass
class ClipModelConfig:
    backbone: str = "convnext_atto"  # any timm model name
    pretrained: bool = False  # timm weights already on the machine (nothing is downloaded)
    checkpoint_path: str | None = None
    init_run: str | None = None  # a stage-1 run folder whose backbone weights start the image tower
    text_encoder: str = "minilm"  # minilm, a Hugging Face model folder or a cached hub id (text/encoder.py)
    text_pooling: str = "mean"  # mean | cls
    embed_dim: int = 128  # the shared space
    init_temperature: float = 0.07  # CLIP's; the logit scale 1 / temperature is learned, capped at 100
    drop_path_rate: float = 0.0
    # the pretrained text tower learns at train.lr * text_lr_scale (a full-rate step on a small image-report set
    # would overwrite what it knows of language before the image tower has learned anything); 0 = frozen (only
    # its projection learns)
    text_lr_scale: float = 0.1


@dataclass
class ClipLossConfig:
    # CXR-CML: L = L_c + cml_weight * L_m (0 = plain CLIP)
    cml_weight: float = 0.0
    cml_components: int = 0  # mixture components; 0 = the number of training classes
    cml_nu: float = 4.0  # the Student-t's degrees of freedom
    cml_refit_every: int = 1  # re-fit the clusters every this many epochs
    cml_margin: float = 0.2  # the triplet loss's margin, on squared distances of unit embeddings
    cml_dims: int = 16  # principal components the mixture is fitted in (0 = the full embedding)


@dataclass
class PromptKeys:
    """The positive / negative prompt pair of zero-shot scoring (vlm/prompts.py: CheXzero's pair)."""

    templates: list[str] = field(default_factory=lambda: ["{}"])
    negative_templates: list[str] = field(default_factory=lambda: ["no {}"])
    synonyms: bool = True


@dataclass
class ClipConfig:
    name: str = "clip"
    output_dir: str = "stage1/runs"
    seed: int = 0
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    loss: ClipLossConfig = field(default_factory=ClipLossConfig)
    prompts: PromptKeys = field(default_factory=PromptKeys)
    train: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        from ..text.encoder import check_pooling

        if self.data.views not in VIEW_MODES:
            raise UserError(f"config key 'data.views' must be one of {', '.join(VIEW_MODES)}, got '{self.data.views}'")
        check_ranges("data", self.data, {"image_size": 16, "max_text_tokens": 4})
        check_ranges("model", self.model, {"embed_dim": 1}, fractions=("drop_path_rate",))
        check_ranges("loss", self.loss, {"cml_components": 0, "cml_refit_every": 1, "cml_dims": 0})
        if self.model.text_lr_scale < 0:
            raise UserError(f"config key 'model.text_lr_scale' must be 0 (frozen) or more, got "
                            f"{self.model.text_lr_scale}")
        if not 0 < self.model.init_temperature <= 1:
            raise UserError(f"config key 'model.init_temperature' must be in (0, 1], got {self.model.init_temperature}")
        if self.loss.cml_weight < 0 or self.loss.cml_margin < 0 or self.loss.cml_nu <= 0:
            raise UserError("config keys 'loss.cml_weight', 'loss.cml_margin' (>= 0) and 'loss.cml_nu' (> 0) are "
                            "out of range")
        check_pooling(self.model.text_pooling)
        if self.train.select_on != "mAP":
            raise UserError("config key 'train.select_on': a clip run keeps the weights of the best validation "
                            "prompt mAP (mAP)")
        self.augment.validate("augment", self.data.image_size)
        if self.augment.mixes:
            raise UserError("config keys 'augment.mixup_alpha' / 'cutmix_alpha': a clip run pairs each image with "
                            "its own report, so images are not mixed")
        self.train.validate()

    def prompt_config(self):
        from ..vlm.prompts import PromptConfig

        cfg = PromptConfig(list(self.prompts.templates), list(self.prompts.negative_templates), self.prompts.synonyms)
        cfg.validate()
        return cfg
