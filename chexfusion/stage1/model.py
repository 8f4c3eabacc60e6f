"""Build the stage-1 model from its config, and rebuild it from a run folder.

A run folder (``chexfusion.run_folder``) is self-contained: ``load_stage1_run``
needs nothing else, which is what the feature store, ``predict`` and the web
demo rely on. A run of an ``hf:`` / ``open_clip:`` backbone keeps that encoder's
architecture files under ``encoder/`` (its weights are in ``model.safetensors``
with the head's), so it rebuilds after the encoder's own folder is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import from_dict, read_yaml
from ..data.images import Preprocess
from ..models.backbone import create_backbone
from ..models.encoders import build_architecture, copy_architecture
from ..models.image_classifier import ImageClassifier
from ..models.linear_head import LinearHead
from ..run_folder import ENCODER_CONFIG, checked_weights, load_weights, read_run_info
from ..run_folder import write_run_info as write_info
from ..text.queries import build_with_queries, recorded_query_dim, restore_text_head
from .config import Stage1Config


def build_image_model(cfg: Stage1Config, num_classes: int, query_dim: int | None = None,
                      pretrained: bool | None = None, encoder_folder: Path | None = None) -> ImageClassifier:
    """``query_dim``: the text-embedding width when ``model.queries`` is text (the decoder then scores a matrix);
    ``encoder_folder``: a run's copy of its encoder's architecture files (the weights then come from the run)."""
    m = cfg.model
    if encoder_folder is not None:
        backbone = build_architecture(m.backbone, encoder_folder, m.drop_path_rate)
    else:
        backbone = create_backbone(m.backbone, pretrained=m.pretrained if pretrained is None else pretrained,
                                   checkpoint_path=m.checkpoint_path, drop_path_rate=m.drop_path_rate)
    head = None
    if m.head == "csra":
        from ..models.csra import CSRAHead

        head = CSRAHead(num_classes, backbone.num_features, m.csra_lambda, m.csra_temperature)
    elif m.head == "linear":
        head = LinearHead(num_classes, backbone.num_features, m.decoder_dropout)
    return ImageClassifier(backbone, num_classes, m.decoder_kwargs(m.decoder_dropout, m.decoder_dim),
                           query_dim=query_dim, head=head)


def build_for_classes(cfg: Stage1Config, classes: list[str]) -> tuple[ImageClassifier, dict | None]:
    """The model to train on ``classes``: with text queries, their embeddings are set in its decoder and the
    returned record (setup and width) goes into run.json."""
    return build_with_queries(cfg.model, classes, lambda query_dim: build_image_model(cfg, len(classes), query_dim))


def write_run_info(run_dir: Path, cfg: Stage1Config, classes, prevalence, pre: Preprocess, model,
                   text_queries: dict | None = None) -> None:
    info = {
        "kind": "stage1",
        "name": cfg.name,
        "classes": list(classes),
        "train_prevalence": [float(p) for p in prevalence],
        "preprocess": pre.to_dict(),
        "backbone": cfg.model.backbone,
        "views": cfg.data.views,
        "feature_shape": list(model.backbone.feature_shape(pre.image_size)),
        "weights": "model.safetensors",  # its sha256 is added by run_folder.write_run_info
        "text_queries": text_queries,
    }
    # an hf: / open_clip: backbone: its architecture files travel with the run (the weights are in the run's file)
    if copy_architecture(cfg.model.backbone, Path(run_dir) / ENCODER_CONFIG):
        info["encoder_config"] = ENCODER_CONFIG
    write_info(run_dir, info)


@dataclass
class TrainedRun:
    """What every loaded run folder offers (stage 1 here, stage 2 in ``stage2.model``): its record and model."""

    path: Path
    config: object
    info: dict  # run.json, checked by run_folder.read_run_info
    model: object

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.info["preprocess"])

    @property
    def weights_sha256(self) -> str:
        return self.info["weights_sha256"]

    @property
    def train_prevalence(self) -> np.ndarray:
        return np.asarray(self.info["train_prevalence"], dtype=np.float64)


@dataclass
class Stage1Run(TrainedRun):
    """A trained stage-1 run, loaded from its folder: ``model`` is its ImageClassifier."""


def load_stage1_run(run_dir: str | Path, map_location: str = "cpu") -> Stage1Run:
    """Rebuild a trained stage-1 model (eval mode) from its run folder alone; no pretrained download."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir, "stage1")
    cfg = from_dict(Stage1Config, read_yaml(run_dir / "config.yaml"))
    encoder_folder = run_dir / info["encoder_config"] if info.get("encoder_config") else None
    model = build_image_model(cfg, num_classes=len(info["classes"]), pretrained=False,
                              query_dim=recorded_query_dim(info), encoder_folder=encoder_folder)
    restore_text_head(model, info)
    load_weights(model, checked_weights(run_dir, info))
    return Stage1Run(run_dir, cfg, info, model.eval().to(map_location))
