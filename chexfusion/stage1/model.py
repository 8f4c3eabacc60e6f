"""Build the stage-1 model from its config, and rebuild it from a run folder.

A run folder is self-contained: ``config.yaml`` (the resolved config),
``run.json`` (class list, training prevalence, preprocessing, feature shape,
weights hash) and ``model.safetensors``. ``load_stage1_run`` needs nothing else,
which is what the feature store, ``predict`` and the web demo rely on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import from_dict, read_yaml
from ..data.images import Preprocess
from ..errors import UserError
from ..io import atomic_write_json, file_sha256
from ..models.backbone import create_backbone
from ..models.image_classifier import ImageClassifier
from ..text.queries import build_with_queries, recorded_query_dim, restore_text_head
from ..training import load_weights
from .config import Stage1Config


def decoder_kwargs(model_cfg) -> dict:
    return dict(dim=model_cfg.decoder_dim, num_layers=model_cfg.decoder_layers, num_heads=model_cfg.decoder_heads,
                ff_dim=model_cfg.decoder_ff_dim, dropout=model_cfg.decoder_dropout, num_groups=model_cfg.decoder_groups)


def build_image_model(cfg: Stage1Config, num_classes: int, query_dim: int | None = None,
                      pretrained: bool | None = None) -> ImageClassifier:
    """``query_dim``: the text-embedding width when ``model.queries`` is text (the decoder then scores a matrix)."""
    m = cfg.model
    backbone = create_backbone(m.backbone, pretrained=m.pretrained if pretrained is None else pretrained,
                               checkpoint_path=m.checkpoint_path, drop_path_rate=m.drop_path_rate)
    head = None
    if m.head == "csra":
        from ..models.csra import CSRAHead

        head = CSRAHead(num_classes, backbone.num_features, m.csra_lambda, m.csra_temperature)
    return ImageClassifier(backbone, num_classes, decoder_kwargs(m), query_dim=query_dim, head=head)


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
        "weights": "model.safetensors",
        "weights_sha256": file_sha256(Path(run_dir) / "model.safetensors"),
        "text_queries": text_queries,
    }
    atomic_write_json(Path(run_dir) / "run.json", info)


@dataclass
class Stage1Run:
    """A trained stage-1 run, loaded from its folder."""

    path: Path
    config: Stage1Config
    info: dict
    model: ImageClassifier

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


def read_run_info(run_dir: str | Path, kind: str) -> dict:
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise UserError(f"{run_dir} is not a finished {kind} run (no run.json): train it first")
    info = json.loads(info_path.read_text())
    if info.get("kind") != kind:
        raise UserError(f"{run_dir} is a {info.get('kind')} run, not a {kind} run")
    return info


def load_stage1_run(run_dir: str | Path, map_location: str = "cpu") -> Stage1Run:
    """Rebuild a trained stage-1 model (eval mode) from its run folder alone; no pretrained download."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir, "stage1")
    cfg = from_dict(Stage1Config, read_yaml(run_dir / "config.yaml"))
    model = build_image_model(cfg, num_classes=len(info["classes"]), pretrained=False,
                              query_dim=recorded_query_dim(info))
    restore_text_head(model, info)
    weights = run_dir / info["weights"]
    if file_sha256(weights) != info["weights_sha256"]:
        raise UserError(f"{weights} does not match the hash in {run_dir / 'run.json'}: the run folder was modified")
    load_weights(model, weights)
    return Stage1Run(run_dir, cfg, info, model.eval().to(map_location))
