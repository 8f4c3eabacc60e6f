"""A torchxrayvision model (``xrv:FOLDER``) as a map extractor: its DenseNet / ResNet trunk, 1-channel input.

torchxrayvision's own loader unpickles whole model objects (its DenseNet files are pickled
``nn.Module``s), which this package never does. So the architecture is built here and a state
dict is loaded into it: the folder holds ``xrv_config.json`` and one weights file
(``model.safetensors``, or a state dict read with ``torch.load(weights_only=True)``,
:mod:`chexfusion.models.state_dict_file`). docs/foundation_models.md shows the one-time conversion.

``xrv_config.json``: ``architecture`` (``densenet``, ``resnet50``, ``resnet101``),
``input_resolution`` (224 for torchxrayvision's DenseNets, 512 for its ResNet: its
``model_urls[weights]["input_resolution"]``), optionally ``weights`` (the torchxrayvision name, for
the record) and, for a DenseNet, ``growth_rate`` / ``block_config`` / ``num_init_features`` /
``bn_size`` (DenseNet-121's by default). The networks are torchvision's DenseNet and ResNet with
the 1-channel stem torchxrayvision gives them: the same modules under the same names, so its state
dicts load key for key (tests check this against torchxrayvision's own classes). The classifier
(and its ``op_threshs``) are not kept: the encoder gives the map.

The map is what torchxrayvision's classifier pools: ``relu(features(x))`` of a DenseNet
(``[B, 1024, 7, 7]`` at 224 px), the last residual stage of a ResNet (``[B, 2048, 16, 16]`` at 512 px).
Preprocessing is torchxrayvision's: one channel, ``(2 * x / maxval - 1) * 1024``, i.e. a
``[0, 1]`` image normalised with mean 0.5 and std 1 / 2048, at ``input_resolution``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ..errors import UserError
from .probe import probe_feature_shape
from .state_dict_file import PATTERNS, state_dict_file, state_dict_sha256

CONFIG_FILE = "xrv_config.json"
MODEL_FILES = (CONFIG_FILE,) + PATTERNS
CONFIG_FILES = (CONFIG_FILE,)
ARCHITECTURES = ("densenet", "resnet50", "resnet101")
DENSENET_DEFAULTS = {"growth_rate": 32, "block_config": [6, 12, 24, 16], "num_init_features": 64, "bn_size": 4}
# torchxrayvision's datasets.normalize: (2 * x / maxval - 1) * 1024 == (x / maxval - 0.5) / (1 / 2048)
XRV_MEAN, XRV_STD = 0.5, 1.0 / 2048


def resolve_folder(target: str) -> Path:
    """The local folder of ``target``, with its config and a weights file that loads without unpickling."""
    folder = Path(target).expanduser()
    if not folder.is_dir():
        raise UserError(f"xrv:{target} is not a model folder: torchxrayvision's own weight files are pickled "
                        f"model objects, which chexfusion never loads; convert them once into a folder with "
                        f"{CONFIG_FILE} and model.safetensors (docs/foundation_models.md)")
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"xrv:{target}: {folder} has no {CONFIG_FILE}")
    state_dict_file(folder, f"xrv:{target}")
    return folder.resolve()


def read_xrv_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({exc})") from None
    if config.get("architecture") not in ARCHITECTURES:
        raise UserError(f"{path}: architecture must be one of {', '.join(ARCHITECTURES)}, "
                        f"got {config.get('architecture')!r}")
    if not isinstance(config.get("input_resolution"), int) or config["input_resolution"] < 1:
        raise UserError(f"{path}: input_resolution (the size the model was trained at, e.g. 224) is missing")
    unknown = sorted(set(config) - {"architecture", "input_resolution", "weights", *DENSENET_DEFAULTS})
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}'")
    return config


def xrv_preprocess(config: dict) -> dict:
    return {"image_size": int(config["input_resolution"]), "channels": 1, "mean": [XRV_MEAN], "std": [XRV_STD],
            "resize": "squash"}


def describe_folder(folder: Path) -> dict:
    """Weights hash, preprocessing and map shape (from the architecture, no weights read)."""
    config = read_xrv_config(folder)
    encoder = XrvEncoder(config, str(folder))
    return {"weights_sha256": state_dict_sha256(state_dict_file(folder, f"xrv:{folder}")),
            "preprocess": xrv_preprocess(config),
            "feature_shape": list(encoder.feature_shape(config["input_resolution"]))}


def build(folder: Path, name: str, pretrained: bool = True, drop_path_rate: float = 0.0) -> "XrvEncoder":
    """``drop_path_rate`` is not a DenseNet / ResNet option: accepted for the common interface, and must be 0."""
    if drop_path_rate:
        raise UserError(f"{name}: model.drop_path_rate applies to ViT-style backbones, not a torchxrayvision CNN")
    encoder = XrvEncoder(read_xrv_config(folder), name)
    if pretrained:
        encoder.load_xrv_state_dict(state_dict_file(folder, name))
        encoder.weights_source = str(folder)
    return encoder


def _trunk(config: dict) -> nn.Module:
    """torchvision's network with torchxrayvision's 1-channel stem; the classifier is left out."""
    if config["architecture"] == "densenet":
        kwargs = {key: config.get(key, default) for key, default in DENSENET_DEFAULTS.items()}
        net = torchvision.models.DenseNet(**{**kwargs, "block_config": tuple(kwargs["block_config"])})
        net.features.conv0 = nn.Conv2d(1, kwargs["num_init_features"], kernel_size=7, stride=2, padding=3, bias=False)
        return nn.ModuleDict({"features": net.features})
    net = getattr(torchvision.models, config["architecture"])(weights=None)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


class XrvEncoder(nn.Module):
    """``[B, 1, H, W]`` images in torchxrayvision's range -> the trunk's last map ``[B, C, h, w]``."""

    def __init__(self, config: dict, name: str):
        super().__init__()
        self.name, self.architecture = name, config["architecture"]
        self.trunk = _trunk(config)
        self.in_chans = 1
        self.weights_source = None
        self.frozen_unused: list[str] = []
        self.num_features = self.feature_shape(int(config["input_resolution"]))[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.architecture == "densenet":
            return F.relu(self.trunk["features"](x))
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        return t.layer4(t.layer3(t.layer2(t.layer1(x))))

    def load_xrv_state_dict(self, path: Path) -> None:
        """Load a torchxrayvision state dict (the whole classifier's): every trunk key must be there, nothing else
        but the classifier (``classifier.*`` / ``fc.*``) and its ``op_threshs``; ``model.`` (xrv's ResNet wrapper)
        is stripped."""
        from .backbone import read_state_dict

        state = read_state_dict(str(path))
        if state and all(k.startswith("model.") for k in state if k != "op_threshs"):
            state = {k.removeprefix("model."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k != "op_threshs" and not k.startswith(("classifier.", "fc."))}
        prefix = "features." if self.architecture == "densenet" else ""
        trunk_keys = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if len(trunk_keys) != len(state):
            extra = next(k for k in state if not k.startswith(prefix))
            raise UserError(f"{path} is not a torchxrayvision {self.architecture} state dict (unexpected key {extra})")
        target = self.trunk["features"] if self.architecture == "densenet" else self.trunk
        try:
            target.load_state_dict(trunk_keys, strict=True)
        except RuntimeError as exc:
            detail = " ".join(line.strip() for line in str(exc).strip().splitlines())
            raise UserError(f"{path} does not fit the {self.architecture} of its {CONFIG_FILE}: "
                            f"{detail[:300]}") from None

    def feature_shape(self, image_size: int | tuple[int, int]) -> tuple[int, int, int]:
        """``(C, h, w)`` from one forward pass of a blank image in eval mode (the module's mode is kept)."""
        return probe_feature_shape(self, 1, image_size)
