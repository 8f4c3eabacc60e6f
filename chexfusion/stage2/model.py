"""Build the fusion model from its config, save a self-contained run folder, and load it back.

A stage-2 run folder carries copies of the stage-1 run(s) or frozen encoder(s) it sits on (under
``backbones/<shared|frontal|lateral>/``, ``feature_store/sources.py``), so ``chexfusion predict`` and the web
demo run the whole model from raw images with that folder alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict, read_yaml
from ..feature_store.sources import FrozenEncoderRun, copy_into_run, load_from_run
from ..models.fusion import FusionEncoder, StudyFusion
from ..models.linear_head import LinearHead
from ..run_folder import checked_weights, load_weights, read_run_info
from ..run_folder import write_run_info as write_info
from ..stage1.model import Stage1Run, TrainedRun
from ..text.queries import build_with_queries, recorded_query_dim, restore_text_head
from .config import Stage2Config


def build_fusion_model(cfg: Stage2Config, num_classes: int, feature_shape, query_dim: int | None = None) -> StudyFusion:
    m = cfg.model
    channels, h, w = feature_shape
    encoder = FusionEncoder(dim=m.dim, projection=m.projection, num_layers=m.layers, num_heads=m.heads,
                            ff_dim=m.ff_dim, dropout=m.dropout, max_images=m.max_images,
                            position_embedding=m.position_embedding)
    head = LinearHead(num_classes, m.dim, m.dropout) if m.head == "linear" else None
    return StudyFusion(num_classes, channels, (h, w), encoder, m.decoder_kwargs(m.dropout), query_dim, head)


def build_for_classes(cfg: Stage2Config, classes: list[str], feature_shape) -> tuple[StudyFusion, dict | None]:
    """The fusion model to train on ``classes``; with text queries their embeddings are set in its decoder and the
    returned record goes into run.json (as in stage 1)."""
    return build_with_queries(cfg.model, classes,
                              lambda query_dim: build_fusion_model(cfg, len(classes), feature_shape, query_dim))


def write_run_info(run_dir: Path, cfg: Stage2Config, classes, prevalence, store_manifest: dict,
                   text_queries: dict | None = None) -> None:
    """Copy the backbone runs into the run folder and record everything predict needs."""
    backbones = {slot: {"path": f"backbones/{slot}", **copy_into_run(src, Path(run_dir) / "backbones" / slot)}
                 for slot, src in cfg.features.backbone_slots().items()}
    info = {
        "kind": "stage2",
        "name": cfg.name,
        "classes": list(classes),
        "train_prevalence": [float(p) for p in prevalence],
        "routing": cfg.features.routing,
        "unknown_view": cfg.features.unknown_view,
        "backbones": backbones,
        "preprocess": store_manifest["preprocess"],
        "feature_shape": list(store_manifest["shape"]),
        "feature_dtype": store_manifest["dtype"],
        "pool": store_manifest.get("pool"),
        "max_images": cfg.model.max_images,
        "weights": "model.safetensors",  # its sha256 is added by run_folder.write_run_info
        "text_queries": text_queries,
    }
    write_info(run_dir, info)


@dataclass
class Stage2Run(TrainedRun):
    """A trained stage-2 run: ``model`` is the fusion model; ``backbones`` the stage-1 run(s) it sits on."""

    backbones: dict[str, Stage1Run | FrozenEncoderRun] = field(default_factory=dict)


def load_stage2_run(run_dir: str | Path, map_location: str = "cpu") -> Stage2Run:
    run_dir = Path(run_dir)
    info = read_run_info(run_dir, "stage2")
    cfg = from_dict(Stage2Config, read_yaml(run_dir / "config.yaml"))
    backbones = {slot: load_from_run(run_dir, b, map_location) for slot, b in info["backbones"].items()}
    model = build_fusion_model(cfg, len(info["classes"]), info["feature_shape"], query_dim=recorded_query_dim(info))
    restore_text_head(model, info)
    load_weights(model, checked_weights(run_dir, info))
    return Stage2Run(run_dir, cfg, info, model.eval().to(map_location), backbones)
