"""A transformers vision model (``hf:ID_OR_FOLDER``) as a map extractor: patch tokens laid on their grid.

RAD-DINO (DINOv2), MedSigLIP / SigLIP, CLIP and similar ViTs return ``last_hidden_state``
``[B, prefix + h*w, C]``. The map ``[B, C, h, w]`` that ML-Decoder and stage 2 take is the
last ``h*w`` tokens, ``h = H // patch``, ``w = W // patch``, in row-major order; the prefix
tokens (class token, DINOv2 registers; SigLIP has none) are dropped. A full vision-language
model (CLIP, SigLIP) contributes only its image tower (``vision_model``).

Offline first: the folder is a local one or the model's snapshot in the Hugging Face cache,
looked up with ``local_files_only``; it is downloaded only when the user allows the network
(``--allow-network``, :mod:`chexfusion.hub`). Weights
are read from ``*.safetensors`` only, never unpickled; no ``trust_remote_code``. Preprocessing
(input size, mean / std) comes from the folder's ``preprocessor_config.json``; images are
resized to the square input size (the crop size if the processor centre-crops).
"""

from __future__ import annotations

import inspect
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..io import file_sha256

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PREPROCESSOR_FILE = "preprocessor_config.json"
# Files that make the model what it is; a stage-2 run folder copies these next to its fusion weights.
MODEL_FILES = ("config.json", PREPROCESSOR_FILE, "*.safetensors", "model.safetensors.index.json")
CONFIG_FILES = ("config.json", PREPROCESSOR_FILE)  # the architecture and its preprocessing, without weights


def how_to_get(model_id: str, family: str = "hf") -> str:
    from ..hub import OPT_IN

    return (f"download it once with network access (hf download {model_id}; for a gated model such as "
            f"google/medsiglip-448 accept its licence on huggingface.co and run hf auth login first), "
            f"let this command download it with {OPT_IN}, or give its local folder as {family}:/path/to/folder")


@contextmanager
def _progress_bars_off():
    """transformers' per-file progress bars off while a model loads (they would precede a one-line error)."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def load_quietly(what: str, load):
    """``load()`` (a transformers ``from_pretrained``); its failure is the user's folder: one line naming ``what``."""
    try:
        with _progress_bars_off():
            return load()
    except (OSError, ValueError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load {what}: {first_line}") from None


def resolve_hf_folder(target: str) -> Path:
    """The local folder of ``target`` (a folder, or a model id in the local Hugging Face cache); checked."""
    path = Path(target).expanduser()
    if path.is_dir():
        folder = path.resolve()
    elif path.exists():
        raise UserError(f"hf:{target} is a file, not a model folder (config.json + *.safetensors)")
    elif os.path.isabs(target) or target.startswith((".", "~")) or target.count("/") > 1:
        raise UserError(f"hf:{target}: folder does not exist")
    else:
        folder = hub_snapshot(target, "hf")
    _check_folder(folder, target)
    return folder


def hub_snapshot(model_id: str, family: str) -> Path:
    """The snapshot folder of ``model_id``: from the local cache, or downloaded when the user allowed the network."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from ..hub import network_allowed

    online = network_allowed()
    try:
        return Path(snapshot_download(model_id, local_files_only=not online))
    except HFValidationError:
        raise UserError(f"{family}:{model_id} is neither an existing folder nor a valid Hugging Face "
                        f"model id") from None
    except LocalEntryNotFoundError:  # offline and not in the cache (or the network was allowed but unreachable)
        where = "could not be downloaded and is not" if online else "is not a local folder and not"
        raise UserError(f"{family}:{model_id} {where} in the Hugging Face cache ({constants.HF_HUB_CACHE}): "
                        f"{how_to_get(model_id, family)}") from None
    except Exception as exc:  # online: huggingface_hub raises many types (not found, gated, HTTP errors)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"could not get {family}:{model_id} from the Hugging Face Hub: {type(exc).__name__}: "
                        f"{first_line} (a gated model needs its licence accepted and hf auth login)") from None


def _check_folder(folder: Path, target: str) -> None:
    if not (folder / "config.json").is_file():
        raise UserError(f"hf:{target}: {folder} has no config.json (not a Hugging Face model folder)")
    if not weight_files(folder):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise UserError(f"hf:{target}: {folder} holds only pickled weights ({pickled[0]}), which are never "
                            f"loaded: save the model as safetensors (model.save_pretrained(folder))")
        raise UserError(f"hf:{target}: {folder} has no *.safetensors weights")


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.safetensors") if p.is_file())


def weights_sha256(folder: Path) -> str:
    """One sha256 over the folder's weight files (name and content): the identity a feature store records."""
    import hashlib

    digest = hashlib.sha256()
    for path in weight_files(folder):
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({exc})") from None


def vision_config(folder: Path) -> dict:
    """The image tower's config entries (``vision_config`` of a CLIP / SigLIP, else the config itself)."""
    config = _read_json(Path(folder) / "config.json")
    return config.get("vision_config") or config


def _square_size(processor: dict, path: Path) -> int:
    size = processor.get("crop_size") if processor.get("do_center_crop") else processor.get("size")
    if isinstance(size, int):
        return size
    size = size or {}
    if "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise UserError(f"{path}: input size {size['height']}x{size['width']} is not square; chexfusion "
                            f"resizes images to a square")
        return int(size["height"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    raise UserError(f"{path}: no input size (size / crop_size) found")


def hf_preprocess(folder: Path) -> dict:
    """``Preprocess`` fields for the model in ``folder``, from its ``preprocessor_config.json``."""
    path = Path(folder) / PREPROCESSOR_FILE
    if not path.is_file():
        raise UserError(f"{folder} has no {PREPROCESSOR_FILE}: the input size and mean / std the model was "
                        f"trained with are unknown (save its image processor there)")
    processor = _read_json(path)
    channels = int(vision_config(folder).get("num_channels", 3))
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if not processor.get("do_normalize", True):
        mean, std = [0.0] * channels, [1.0] * channels
    if mean is None or std is None:
        raise UserError(f"{path}: image_mean / image_std missing")
    if processor.get("do_rescale", True) is False:
        raise UserError(f"{path}: do_rescale is false (the model takes 0-255 pixels), which chexfusion does not do")
    return {"image_size": _square_size(processor, path), "channels": channels, "mean": list(mean),
            "std": list(std), "resize": "squash"}


def describe_hf_folder(folder: Path) -> dict:
    """Weights hash, preprocessing and map shape of the model in ``folder``, without building it."""
    pre = hf_preprocess(folder)
    config = vision_config(folder)
    patch = int(config.get("patch_size", 0))
    if not patch or "hidden_size" not in config:
        raise UserError(f"{folder}/config.json: no patch_size / hidden_size: not a ViT-style vision model")
    side = pre["image_size"] // patch
    return {"weights_sha256": weights_sha256(folder), "preprocess": pre,
            "feature_shape": [int(config["hidden_size"]), side, side]}


class HFEncoder(nn.Module):
    """``[B, channels, H, W]`` images -> ``[B, hidden_size, H // patch, W // patch]`` patch-token map."""

    def __init__(self, folder: Path, name: str, pretrained: bool = True, drop_path_rate: float = 0.0):
        """``pretrained=False`` builds the architecture alone (the weights then come from a run folder)."""
        super().__init__()
        import transformers

        self.name, self.folder = name, Path(folder)
        overrides = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        config = load_quietly(name, lambda: transformers.AutoConfig.from_pretrained(
            str(folder), local_files_only=True, **overrides))
        if pretrained:
            model = load_quietly(name, lambda: transformers.AutoModel.from_pretrained(
                str(folder), config=config, local_files_only=True, use_safetensors=True, dtype=torch.float32))
        else:
            model = load_quietly(name, lambda: transformers.AutoModel.from_config(config))
        self.tower = getattr(model, "vision_model", model)  # CLIP / SigLIP: the image tower only
        config = vision_config(folder)
        self.patch_size, self.config_image_size = int(config["patch_size"]), int(config.get("image_size", 0))
        self.num_features = int(config["hidden_size"])
        self.in_chans = int(config.get("num_channels", 3))
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(self.tower.forward).parameters
        self.weights_source = str(folder) if pretrained else None
        self.frozen_unused: list[str] = []

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        kwargs = {}
        if self._interpolate and tuple(x.shape[-2:]) != (self.config_image_size,) * 2:
            kwargs["interpolate_pos_encoding"] = True
        tokens = self.tower(pixel_values=x, **kwargs).last_hidden_state
        if tokens.shape[1] < h * w:
            raise UserError(f"{self.name}: {tokens.shape[1]} tokens for a {h}x{w} patch grid")
        patches = tokens[:, tokens.shape[1] - h * w:]  # drop the prefix (class / register) tokens
        return patches.transpose(1, 2).reshape(x.shape[0], tokens.shape[-1], h, w)

    def feature_shape(self, image_size: int | tuple[int, int]) -> tuple[int, int, int]:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        return self.num_features, size[0] // self.patch_size, size[1] // self.patch_size

    def layer_ids(self) -> dict[str, int]:
        """Depths for ``train.layer_decay``: embeddings, ``encoder.layer(s).i`` (DINOv2, CLIP, SigLIP), final norm
        (and SigLIP's pooling head) last."""
        from .layer_groups import layer_ids, vit_matcher

        return layer_ids(self.tower, vit_matcher(r"^embeddings|^pre_layrnorm", r"^encoder\.layers?\.(\d+)",
                                                 r"^layernorm|^post_layernorm"), "tower.")


resolve_folder, describe_folder = resolve_hf_folder, describe_hf_folder


def build(folder: Path, name: str, pretrained: bool = True, drop_path_rate: float = 0.0) -> HFEncoder:
    return HFEncoder(folder, name=name, pretrained=pretrained, drop_path_rate=drop_path_rate)
