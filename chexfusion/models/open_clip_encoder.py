"""An open_clip model's image tower (``open_clip:ID_OR_FOLDER``) as a map extractor: BiomedCLIP, CheXzero-style CLIPs.

The folder is open_clip's ``local-dir:`` layout: ``open_clip_config.json`` (``model_cfg`` and
``preprocess_cfg``) and one weights file: ``*.safetensors``, or a PyTorch state dict (``*.pt`` /
``*.pth`` / ``*.bin``, e.g. a CheXzero checkpoint as published, an OpenAI-CLIP ViT-B/32 state dict)
read with ``weights_only=True`` and put through open_clip's ``load_checkpoint`` (its key conversions,
position-embedding resizing, strict load). A file holding pickled objects is refused in one line
(:mod:`chexfusion.models.state_dict_file`). A Hugging Face id (e.g.
``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) is looked up in the local Hugging
Face cache, or downloaded when the user allows the network (:mod:`chexfusion.hub`).

The map is the tower's last block as open_clip's ``forward_intermediates`` lays it out
(``[B, C, h, w]``, prefix tokens dropped, final norm applied), which works for its own ViTs and
for timm trunks alike. Preprocessing (size, mean / std) is the model's ``preprocess_cfg``.
open_clip is an optional dependency (``pip install 'chexfusion[foundation]'``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from torch import Tensor, nn

from ..errors import UserError
from .hf_encoder import hub_snapshot
from .probe import probe_feature_shape
from .state_dict_file import PATTERNS, state_dict_file, state_dict_sha256

CONFIG_FILE = "open_clip_config.json"
MODEL_FILES = (CONFIG_FILE,) + PATTERNS
CONFIG_FILES = (CONFIG_FILE,)


def import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise UserError("open_clip: encoders need the package open_clip_torch: "
                        "pip install 'chexfusion[foundation]' (or pip install open_clip_torch)") from None
    return open_clip


def resolve_folder(target: str) -> Path:
    """The local ``local-dir:`` folder of ``target`` (a folder, or a model id in the Hugging Face cache)."""
    path = Path(target).expanduser()
    if path.is_dir():
        folder = path.resolve()
    elif path.exists() or path.is_absolute() or target.startswith((".", "~")) or target.count("/") != 1:
        raise UserError(f"open_clip:{target}: not a model folder ({CONFIG_FILE} + its weights) "
                        f"nor a Hugging Face model id")
    else:
        folder = hub_snapshot(target, "open_clip")  # the local cache, or the Hub when the user allowed it
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"open_clip:{target}: {folder} has no {CONFIG_FILE}")
    state_dict_file(folder, f"open_clip:{target}")
    return folder


@contextmanager
def _warnings_of_random_init_off():
    """open_clip logs warnings on the root logger when it builds a model without weights; not shown here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def create_open_clip(folder: Path, pretrained: bool = True) -> nn.Module:
    """The whole open_clip model of ``folder`` (weights from its state-dict file when ``pretrained``)."""
    open_clip = import_open_clip()
    try:
        with _warnings_of_random_init_off():  # "no weights found, initialised randomly": the weights come next
            model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
        if pretrained:
            open_clip.load_checkpoint(model, str(state_dict_file(folder, f"open_clip:{folder}")), strict=True,
                                      weights_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()) or type(exc).__name__
        raise UserError(f"cannot load open_clip:{folder}: {detail[:300]}") from None
    return model


def open_clip_preprocess(model: nn.Module, folder: Path) -> dict:
    cfg = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", getattr(model.visual, "image_size", None))
    size = size if isinstance(size, int) else tuple(size or ())
    if not isinstance(size, int) and (len(size) != 2 or size[0] != size[1]):
        raise UserError(f"open_clip:{folder}: input size {size} is not square; chexfusion resizes to a square")
    mean, std = list(cfg.get("mean", ())), list(cfg.get("std", ()))
    if not mean or not std:
        raise UserError(f"open_clip:{folder}: no image mean / std in its preprocess_cfg")
    return {"image_size": size if isinstance(size, int) else int(size[0]), "channels": len(mean), "mean": mean,
            "std": std, "resize": "squash"}


def describe_folder(folder: Path) -> dict:
    """Weights hash, preprocessing and map shape (from the architecture, no weights read)."""
    model = create_open_clip(folder, pretrained=False)
    pre = open_clip_preprocess(model, folder)
    return {"weights_sha256": state_dict_sha256(state_dict_file(folder, f"open_clip:{folder}")), "preprocess": pre,
            "feature_shape": list(OpenClipEncoder(model, str(folder)).feature_shape(pre["image_size"]))}


def build(folder: Path, name: str, pretrained: bool = True, drop_path_rate: float = 0.0) -> "OpenClipEncoder":
    """``drop_path_rate`` is not applied: open_clip sets the tower's regularisation in its own config."""
    return OpenClipEncoder(create_open_clip(folder, pretrained), name, str(folder) if pretrained else None)


class OpenClipEncoder(nn.Module):
    """``[B, 3, H, W]`` images -> the image tower's last-block map ``[B, C, h, w]``."""

    def __init__(self, model: nn.Module, name: str, weights_source: str | None = None):
        super().__init__()
        self.name, self.visual = name, model.visual  # the text tower is not kept
        if not hasattr(self.visual, "forward_intermediates"):
            raise UserError(f"{name}: its image tower ({type(self.visual).__name__}) gives no spatial map")
        self.weights_source = weights_source
        self.frozen_unused: list[str] = []
        size = getattr(self.visual, "image_size", 224)
        self.num_features = self.feature_shape(size if isinstance(size, int) else tuple(size))[0]

    def forward(self, x: Tensor) -> Tensor:
        out = self.visual.forward_intermediates(x, indices=1, intermediates_only=True, normalize_intermediates=True)
        return out["image_intermediates"][-1]

    def layer_ids(self) -> dict[str, int]:
        """Depths for ``train.layer_decay``: a timm trunk's own groups (BiomedCLIP), else open_clip's ViT (CheXzero):
        patch embedding and class / position embeddings, ``transformer.resblocks.i``, ``ln_post`` / ``proj`` last."""
        from .layer_groups import layer_ids, vit_matcher

        trunk = getattr(self.visual, "trunk", None)
        if trunk is not None and hasattr(trunk, "group_matcher"):
            return layer_ids(trunk, trunk.group_matcher(coarse=False), "visual.trunk.")
        return layer_ids(self.visual, vit_matcher(r"^conv1|^class_embedding|^positional_embedding|^ln_pre",
                                                  r"^transformer\.resblocks\.(\d+)", r"^ln_post|^proj"), "visual.")

    def feature_shape(self, image_size: int | tuple[int, int]) -> tuple[int, int, int]:
        """``(C, h, w)`` from one forward pass of a blank image in eval mode (the tower's mode is kept)."""
        return probe_feature_shape(self, 3, image_size)
