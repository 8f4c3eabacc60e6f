"""What a feature-store backbone slot names: a stage-1 run folder, or a frozen pretrained encoder spec.

``features.shared_backbone`` (and the per-view ones) is either a stage-1 run folder, as
before, or an encoder spec such as ``hf:microsoft/rad-dino`` (:mod:`chexfusion.models.encoders`):
a foundation model used frozen, with no stage-1 training, so stage 2 learns the only head.
Both give the same manifest entry (weights hash, backbone, preprocessing, map shape); an
encoder's entry also names the spec under ``encoder``, and its hash is of its weight files,
so a store made by one encoder is refused by stage 2 configured with another.

A stage-2 run folder copies what its backbones are made of (``backbones/<slot>/``): the
stage-1 run files, or the encoder's model files (config, preprocessor config, safetensors),
so predict and the web demo need nothing else.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..data.images import Preprocess
from ..errors import UserError
from ..models.encoders import describe_encoder, encoder_files, is_encoder_spec, parse_encoder_spec

STAGE1_FILES = ("config.yaml", "run.json", "model.safetensors")


def names_encoder(value: str) -> bool:
    """An encoder spec, or something written like one (``hf-hub:...``) that is no folder: refused as a spec."""
    return is_encoder_spec(value) or (":" in str(value) and not Path(value).exists())


def backbone_entry(slot: str, value: str, routing: str) -> dict:
    """The manifest entry of one routing slot (plus ``preprocess`` and ``feature_shape``, checked across slots)."""
    if names_encoder(value):
        found = describe_encoder(value)
        return {"run": None, "encoder": found["encoder"], "weights_sha256": found["weights_sha256"],
                "backbone": found["encoder"], "trained_on_views": "all", "preprocess": found["preprocess"],
                "feature_shape": found["feature_shape"]}
    from ..run_folder import read_run_info

    info = read_run_info(value, "stage1")
    trained_on = info.get("views", "all")
    if routing == "per_view" and trained_on not in ("all", slot):
        raise UserError(f"config key 'features.{slot}_backbone': stage-1 run {value} was trained on {trained_on} "
                        f"images only, not {slot} ones")
    return {"run": str(value), "weights_sha256": info["weights_sha256"], "backbone": info["backbone"],
            "trained_on_views": trained_on, "preprocess": info["preprocess"],
            "feature_shape": [int(d) for d in info["feature_shape"]]}


def describe_source(entry: dict) -> str:
    """How a message names a manifest entry's backbone."""
    return f"encoder {entry['encoder']}" if entry.get("encoder") else f"stage-1 run {entry['run']}"


@dataclass
class FrozenEncoderRun:
    """A pretrained encoder in the place of a stage-1 run: its map extractor as ``model.forward_features``."""

    path: Path
    spec: str
    weights_sha256: str
    preprocess: Preprocess
    model: nn.Module
    classes = None  # no stage-1 head: stage 2 learns the only one


class _MapOnly(nn.Module):
    """An encoder with the ``forward_features`` of a stage-1 model (what feature extraction and predict call)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.backbone = encoder

    def forward_features(self, images):
        return self.backbone(images)

    forward = forward_features


def load_encoder(spec: str, expected_sha256: str, path: Path | None = None,
                 map_location: str = "cpu") -> FrozenEncoderRun:
    """The frozen encoder ``spec``, refused when its weight files no longer hash to ``expected_sha256``."""
    from ..models.encoders import build_encoder

    found = describe_encoder(spec)
    if found["weights_sha256"] != expected_sha256:
        raise UserError(f"encoder {spec} changed (its weights now hash to {found['weights_sha256'][:12]}…, "
                        f"{expected_sha256[:12]}… was recorded): run chexfusion features again")
    model = _MapOnly(build_encoder(spec, pretrained=True)).eval().requires_grad_(False).to(map_location)
    return FrozenEncoderRun(Path(path or "."), spec, expected_sha256, Preprocess.from_dict(found["preprocess"]),
                            model)


def slot_classes(value: str) -> list[str] | None:
    """The classes of a stage-1 run slot; None for an encoder (it has no head)."""
    if is_encoder_spec(value):
        return None
    from ..run_folder import read_run_info

    return read_run_info(value, "stage1")["classes"]


def copy_into_run(value: str, dst: Path) -> dict:
    """Copy a slot's backbone into a stage-2 run folder at ``dst``; the run.json record that finds it again."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if not is_encoder_spec(value):
        from ..run_folder import copy_encoder_config, read_run_info

        for name in STAGE1_FILES:
            shutil.copy2(Path(value) / name, dst / name)
        copy_encoder_config(value, dst)
        return {"source": str(value), "weights_sha256": read_run_info(dst, "stage1")["weights_sha256"]}
    spec = parse_encoder_spec(value)
    folder, patterns = encoder_files(value)
    for pattern in patterns:
        for path in folder.glob(pattern):
            shutil.copy2(path, dst / path.name)  # follows the HF cache's symlinks: the run gets real files
    return {"source": str(value), "encoder": str(spec),
            "weights_sha256": describe_encoder(f"{spec.family}:{dst}")["weights_sha256"]}


def load_from_run(run_dir: Path, record: dict, map_location: str = "cpu"):
    """A stage-2 run's backbone of one slot, from the copy in its folder (a stage-1 run or an encoder)."""
    path = Path(run_dir) / record["path"]
    if record.get("encoder"):
        family = parse_encoder_spec(record["encoder"]).family
        return load_encoder(f"{family}:{path}", record["weights_sha256"], path, map_location)
    from ..stage1.model import load_stage1_run

    run = load_stage1_run(path, map_location)
    if run.weights_sha256 != record["weights_sha256"]:
        raise UserError(f"{path} is not the backbone this stage-2 run was trained on")
    return run
