"""The stage-1 configuration. Defaults are the laptop demo; ``stage1/cxr-lt.yaml`` is the full recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_ranges
from ..data.augment import AugmentConfig
from ..data.intensity import INTENSITY_MODES
from ..errors import UserError
from ..models.head_config import HeadKeys
from ..sampling import SamplingConfig
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
    intensity: str = "full_range"  # 16-bit images (PadChest): full_range | minmax | percentile, recorded in the run
    skip_bad_images: bool = False
    # progressive resolution: epoch e (from 1) trains at image_sizes_by_epoch[e - 1] pixels, later epochs (and
    # validation, test, the saved run) at image_size; e.g. [96, 96, 128]
    image_sizes_by_epoch: list[int] = field(default_factory=list)


@dataclass
class ModelConfig(HeadKeys):
    backbone: str = "convnext_atto"  # any timm model name, or an encoder spec (hf:, open_clip:; models/encoders.py)
    pretrained: bool = False
    checkpoint_path: str | None = None  # local weights for `pretrained` (nothing is downloaded)
    allow_network: bool = False  # an hf: / open_clip: Hub id not in the local cache may be downloaded (chexfusion.hub)
    drop_path_rate: float = 0.0
    decoder_dim: int = 256
    decoder_dropout: float = 0.1
    csra_lambda: float = 0.1  # CSRA: weight of the attention-pooled score (the CXR-LT 2026 winner's 0.1)
    csra_temperature: float = 1.0  # CSRA: softmax temperature over the map's locations


@dataclass
class LossConfig:
    name: str = "weighted_asl"  # bce | weighted_bce | focal | asl | weighted_asl | ral | reweighted
    params: dict = field(default_factory=dict)


@dataclass
class ExternalSetConfig:
    """One unlabelled-for-us image set the teacher pseudo-labels (see chexfusion.data.external)."""

    format: str = "nih"  # nih | chexpert | vindr
    csv: str = ""  # Data_Entry_2017.csv, CheXpert train.csv, VinDr annotations CSV
    image_root: str = ""  # the folder the set's image paths are relative to
    name: str | None = None  # its key in the pseudo-label table; default: the format
    agreement: str = "majority"  # VinDr: any | majority | all readers must mark a finding
    image_suffix: str = ".dicom"  # VinDr: image file = <image_id><image_suffix>

    @property
    def key(self) -> str:
        return self.name or self.format


@dataclass
class NoisyStudentConfig:
    """Noisy-student self-training (chexfusion.stage1.noisy_student); rounds: 0 is plain stage 1."""

    rounds: int = 0
    external: list[ExternalSetConfig] = field(default_factory=list)
    pseudo_label: str = "soft"  # soft: teacher probabilities | hard: probability >= threshold
    threshold: float = 0.5
    align_prevalence: bool = True  # shift each class's pseudo-labels to the labelled prevalence (keeps the ranking)
    uncertain_label: str = "pseudo"  # an external -1: pseudo (the teacher decides) | zero | one | ignore
    student_init: str = "scratch"  # scratch (Noisy Student, Xie et al. 2020) | teacher (start from its weights)
    student_epochs: int = 0  # 0: train.epochs
    student_augment: AugmentConfig = field(default_factory=AugmentConfig.strong)
    student_drop_path: float = 0.1  # stochastic depth of the student's backbone
    student_dropout: float = 0.1  # dropout of the student's ML-Decoder

    def validate(self) -> None:
        from ..data.external import AGREEMENT_RULES, EXTERNAL_FORMATS

        if self.rounds < 0:
            raise UserError("config key 'noisy_student.rounds' must be 0 or more")
        choices = {"pseudo_label": ("soft", "hard"), "uncertain_label": ("pseudo", "zero", "one", "ignore"),
                   "student_init": ("scratch", "teacher")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"config key 'noisy_student.{key}' must be one of {', '.join(allowed)}, "
                                f"got '{getattr(self, key)}'")
        if not 0.0 < self.threshold < 1.0:
            raise UserError("config key 'noisy_student.threshold' must lie strictly between 0 and 1")
        if self.student_epochs < 0 or not 0.0 <= self.student_drop_path < 1.0 or not 0.0 <= self.student_dropout < 1.0:
            raise UserError("config keys 'noisy_student.student_epochs' (>= 0), 'student_drop_path' and "
                            "'student_dropout' (in [0, 1)) are out of range")
        if self.rounds and not self.external:
            raise UserError("config key 'noisy_student.external' must list at least one set when rounds > 0")
        seen = set()
        for i, entry in enumerate(self.external):
            where = f"noisy_student.external[{i}]"
            if entry.format not in EXTERNAL_FORMATS:
                raise UserError(f"config key '{where}.format' must be one of {', '.join(EXTERNAL_FORMATS)}, "
                                f"got '{entry.format}'")
            if not entry.csv or not entry.image_root:
                raise UserError(f"config keys '{where}.csv' and '{where}.image_root' are required")
            if entry.agreement not in AGREEMENT_RULES:
                raise UserError(f"config key '{where}.agreement' must be one of {', '.join(AGREEMENT_RULES)}")
            if entry.key in seen:
                raise UserError(f"config key '{where}.name': two external sets are called '{entry.key}'")
            seen.add(entry.key)


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
    tta_hflip: bool = True  # average with the horizontally flipped image at evaluation (and pseudo-labelling)
    tta: list[str] = field(default_factory=list)  # more test-time views (data/tta.py): flip, scale:0.9, shift:0.05
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # uniform | repeat_factor (sampling.py)
    noisy_student: NoisyStudentConfig = field(default_factory=NoisyStudentConfig)

    def validate(self) -> None:
        if self.data.views not in VIEW_FILTERS:
            raise UserError(f"config key 'data.views' must be one of {list(VIEW_FILTERS)}, got '{self.data.views}'")
        for key in ("uncertain_label", "blank_label"):
            if getattr(self.data, key) not in ("zero", "one", "ignore"):
                raise UserError(f"config key 'data.{key}' must be zero, one or ignore")
        if self.data.intensity not in INTENSITY_MODES:
            raise UserError(f"config key 'data.intensity' must be one of {', '.join(INTENSITY_MODES)}, "
                            f"got '{self.data.intensity}'")
        check_ranges("model", self.model, {"decoder_dim": 1},
                     fractions=("drop_path_rate", "decoder_dropout"))
        self.model.validate_head()
        self.model.check_head_kind(("ml_decoder", "csra", "linear"))
        self.check_recipe()
        self.sampling.validate()
        self.train.validate()
        self.noisy_student.validate()

    def check_recipe(self) -> None:
        """The recipe keys of issue 18: augmentations, MixUp batch size, progressive sizes, TTA views."""
        from ..data.tta import parse_tta

        self.augment.validate("augment", self.data.image_size)
        self.noisy_student.student_augment.validate("noisy_student.student_augment", self.data.image_size)
        if (self.augment.mixes or self.noisy_student.student_augment.mixes) and self.train.batch_size % 2:
            raise UserError(f"config key 'train.batch_size' must be even with MixUp / CutMix (augment.mixup_alpha, "
                            f"cutmix_alpha), got {self.train.batch_size}")
        sizes = self.data.image_sizes_by_epoch
        if any(size < 16 for size in sizes) or len(sizes) > self.train.epochs:
            raise UserError(f"config key 'data.image_sizes_by_epoch' lists at most train.epochs ({self.train.epochs}) "
                            f"sizes of 16 pixels or more, got {sizes}")
        parse_tta(self.tta, key="tta")

    def tta_views(self):
        """The evaluation's test-time views: ``tta`` plus the flip of ``tta_hflip``."""
        from ..data.tta import parse_tta

        return parse_tta((["flip"] if self.tta_hflip else []) + list(self.tta), key="tta")
