"""One encoder spec wherever a backbone is named: which family builds it, from where, with what preprocessing.

A spec is ``FAMILY:TARGET`` or a bare timm name:

* ``timm:NAME`` or ``NAME``: a timm model (:mod:`chexfusion.models.backbone`), weights from
  ``model.checkpoint_path`` or the local timm / Hugging Face cache;
* ``hf:ID_OR_FOLDER``: a transformers vision model (RAD-DINO, DINOv2, SigLIP / MedSigLIP, CLIP's
  image tower) from a local folder or the Hugging Face cache (:mod:`chexfusion.models.hf_encoder`);
* ``open_clip:ID_OR_FOLDER``: an open_clip model's image tower (BiomedCLIP, a CheXzero state dict
  in open_clip's ViT-B-32 layout), :mod:`chexfusion.models.open_clip_encoder`.

* ``xrv:FOLDER``: a torchxrayvision DenseNet / ResNet converted once into a state-dict folder
  (torchxrayvision's own files are pickled model objects, never loaded),
  :mod:`chexfusion.models.xrv_encoder`.

Any other ``prefix:`` is a user error, so a typo never falls through to a timm name lookup.

Stage 1 builds any spec through :func:`build_encoder`; the feature store uses
:func:`describe_encoder` (preprocessing, map shape and weights hash without building anything big)
for a frozen encoder that no stage-1 run trained, and records all three in its manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

FAMILIES = ("timm", "hf", "open_clip", "xrv")
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class EncoderSpec:
    family: str
    target: str

    def __str__(self) -> str:
        return f"{self.family}:{self.target}"


def parse_encoder_spec(text: str) -> EncoderSpec:
    """``timm:NAME`` / bare name, ``hf:ID_OR_FOLDER``, ...; a malformed spec is a one-line UserError."""
    text = str(text).strip()
    if not text:
        raise UserError("encoder spec is empty: give a timm name, timm:NAME or hf:ID_OR_FOLDER")
    prefix, sep, rest = text.partition(":")
    if not sep:
        return EncoderSpec("timm", text)
    if prefix not in FAMILIES:
        if _PREFIX.fullmatch(prefix) and len(prefix) > 1:  # not a Windows drive letter
            raise UserError(f"encoder spec '{text}': unknown prefix '{prefix}:' "
                            f"(known: {', '.join(f + ':' for f in FAMILIES)} or a bare timm name)")
        return EncoderSpec("timm", text)
    if not rest.strip():
        raise UserError(f"encoder spec '{text}' names no model after '{prefix}:'")
    return EncoderSpec(prefix, rest.strip())


def is_encoder_spec(text: str) -> bool:
    """Whether ``text`` is written as ``FAMILY:...`` (a feature-store backbone that is no stage-1 run folder)."""
    prefix, sep, _ = str(text).strip().partition(":")
    return bool(sep) and prefix in FAMILIES


# Each family's module offers resolve_folder(target), describe_folder(folder), build(folder, name, pretrained, **kw),
# MODEL_FILES (the glob patterns of the files that make the model) and CONFIG_FILES (those of its architecture).
_FAMILY_MODULES = {"hf": "hf_encoder", "open_clip": "open_clip_encoder", "xrv": "xrv_encoder"}


def family_module(family: str):
    import importlib

    return importlib.import_module(f".{_FAMILY_MODULES[family]}", __package__)


def build_encoder(spec_text: str, pretrained: bool = False, checkpoint_path: str | None = None, **kw):
    """The map extractor for ``spec_text``: ``forward(images) -> [B, C, h, w]``, ``num_features``, ``feature_shape``.

    ``kw`` goes to the timm family (``drop_path_rate``, ``in_chans``, ``img_size``...); the other families take
    their architecture from the folder's config, and their weights too when ``pretrained``.
    """
    spec = parse_encoder_spec(spec_text)
    if spec.family == "timm":
        from .backbone import Backbone

        return Backbone(spec.target, pretrained=pretrained, checkpoint_path=checkpoint_path, **kw)
    if checkpoint_path:
        raise UserError(f"model.checkpoint_path applies to timm backbones; '{spec}' loads its weights "
                        f"from its own folder")
    module = family_module(spec.family)
    return module.build(module.resolve_folder(spec.target), str(spec_text), pretrained,
                        drop_path_rate=kw.get("drop_path_rate", 0.0))


def describe_encoder(spec_text: str) -> dict:
    """What a feature store records of a frozen encoder: spec, weights hash, preprocessing, map shape.

    Never reads the weights into a model: the hash is of the weight files, the shape of the config.
    """
    spec = parse_encoder_spec(spec_text)
    if spec.family == "timm":
        raise UserError(f"features backbone '{spec_text}': a frozen feature-store encoder must be an hf:, "
                        f"open_clip: or xrv: spec or a stage-1 run folder (a timm model is trained with "
                        f"chexfusion stage1 first)")
    module = family_module(spec.family)
    return {"encoder": str(spec), **module.describe_folder(module.resolve_folder(spec.target))}


def copy_architecture(spec_text: str, dst: Path) -> bool:
    """Copy the architecture files of an encoder spec (not its weights) into ``dst``; False for a timm model, whose
    architecture is its name."""
    import shutil

    spec = parse_encoder_spec(spec_text)
    if spec.family == "timm":
        return False
    module = family_module(spec.family)
    folder = module.resolve_folder(spec.target)
    dst.mkdir(parents=True, exist_ok=True)
    for name in module.CONFIG_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, dst / name)
    return True


def build_architecture(spec_text: str, folder: Path, drop_path_rate: float = 0.0):
    """The encoder ``spec_text`` names, built from the architecture files in ``folder`` (a run's copy) without
    weights: the run's model.safetensors holds them."""
    spec = parse_encoder_spec(spec_text)
    return family_module(spec.family).build(Path(folder), str(spec_text), False, drop_path_rate=drop_path_rate)


def encoder_files(spec_text: str) -> tuple[Path, tuple[str, ...]]:
    """The folder of a frozen encoder and the glob patterns of the files that make it (for copying it)."""
    spec = parse_encoder_spec(spec_text)
    if spec.family == "timm":
        raise UserError(f"encoder {spec_text} has no folder to copy")
    module = family_module(spec.family)
    return module.resolve_folder(spec.target), module.MODEL_FILES


def check_stage1_normalisation(spec_text: str, mean, std) -> None:
    """A pretrained hf: / open_clip: backbone fine-tuned in stage 1 must see images normalised as in its
    pretraining: refuse other ``data.mean`` / ``data.std`` with the values to set (the size may differ: ViTs
    interpolate their position embeddings)."""
    spec = parse_encoder_spec(spec_text)
    if spec.family == "timm":
        return
    want = describe_encoder(spec_text)["preprocess"]
    if want["channels"] != 3:
        raise UserError(f"model.backbone {spec_text} takes {want['channels']}-channel images and stage 1 trains on "
                        f"3-channel ones: use it frozen as the feature store's backbone (features.shared_backbone)")
    if [round(float(m), 6) for m in mean] != [round(float(m), 6) for m in want["mean"]] or \
            [round(float(s), 6) for s in std] != [round(float(s), 6) for s in want["std"]]:
        raise UserError(f"model.backbone {spec_text} was pretrained on images normalised with mean {want['mean']} "
                        f"and std {want['std']}: set data.mean={want['mean']} data.std={want['std']} "
                        f"(and data.image_size={want['image_size']}, its input size)")
