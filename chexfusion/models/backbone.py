"""Any ``timm`` model as a feature extractor that returns its final spatial map.

Why a wrapper: the ML-Decoder head and the stage-2 fusion need the *map*
``[B, C, h, w]`` (no global pooling), and timm families disagree on its layout.
Supported, by what ``forward_features`` returns:

* CNNs returning ``[B, C, h, w]`` (ResNet, ConvNeXt, EfficientNet, RegNet, ...);
* channels-last models that declare ``output_fmt = 'NHWC'`` (Swin and relatives),
  permuted to ``[B, C, h, w]``;
* ViT-style token models with a ``patch_embed`` (ViT, DeiT, EVA, BEiT, ...): the
  prefix tokens (class, distillation, register) are dropped and the patch tokens
  are laid out on the patch grid of the input size.

Anything else is refused at construction with a one-line error. Parameters that
``forward_features`` never uses (e.g. ConvNeXt's head norm once the classifier is
removed) are frozen, so the optimizer carries no dead weights and distributed
data parallel does not need ``find_unused_parameters``.

Pretrained weights never come from the network. ``pretrained=True`` loads
``checkpoint_path`` if given (``.safetensors``, or a PyTorch file read with
``weights_only=True``: nothing is unpickled), else the file timm would use if it
is already in the local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) or the
torch hub cache. If neither exists the user gets one line saying how to get
them. The checkpoint goes through timm's own converter for the family (e.g.
position-embedding resampling for another ViT input size), the first convolution
is adapted to ``in_chans``, the ImageNet classifier is dropped, and every other
key must match: a checkpoint of the wrong architecture is refused, never half
loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import UserError

log = logging.getLogger(__name__)

HOW_TO_LIST = "list the names with: python -c \"import timm; print(timm.list_models('*convnext*'))\""


def missing_weights_message(name: str) -> str:
    return (
        f"pretrained weights for '{name}' are not on this machine: download them once with network access "
        f"(e.g. timm.create_model('{name}', pretrained=True)) or set a local file with model.checkpoint_path=..., "
        f"or set model.pretrained=false"
    )


# ----------------------------------------------------------------- model creation
def _create_timm_model(name: str, in_chans: int, drop_path_rate: float, drop_rate: float, extra: dict) -> nn.Module:
    if ":" in name:
        raise UserError(f"model '{name}': hub-prefixed names need the network; use a timm model name "
                        f"and model.checkpoint_path for local weights")
    architecture, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(architecture):
        raise UserError(f"unknown timm model '{name}': {HOW_TO_LIST}")
    if tag and not timm.list_pretrained(name):
        raise UserError(f"timm model '{architecture}' has no pretrained tag '{tag}': "
                        f"list them with: python -c \"import timm; print(timm.list_pretrained('{architecture}.*'))\"")
    kwargs = dict(extra, num_classes=0, in_chans=in_chans)
    # Only pass regularisation options that are switched on: not every family accepts them.
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        options = ", ".join(sorted(kwargs))
        raise UserError(f"timm model '{name}' does not accept the options given ({options}): {exc}") from None


# ----------------------------------------------------------------- weights on disk
def _hf_cache_dir() -> str:
    """The Hugging Face hub cache the environment names *now* (huggingface_hub reads it only at import)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    hf_home = os.environ.get("HF_HOME") or os.path.join(cache_home, "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(hf_home, "hub")
    return os.path.expanduser(hub)


def find_local_weights(model: nn.Module) -> str | None:
    """The file timm would load for this model's pretrained tag, if it is already on this machine."""
    from huggingface_hub import try_to_load_from_cache

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors",
                                                                                 "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir(), revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    candidates = []
    if cfg.get("url"):
        candidates.append(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg["url"]).path)))
    if cfg.get("file"):
        candidates.append(str(cfg["file"]))
    return next((path for path in candidates if os.path.isfile(path)), None)


def read_state_dict(path: str) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, read without unpickling arbitrary objects."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path, device="cpu")
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for foreign or pickled content
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: not a weights-only PyTorch checkpoint ({first_line})") from None
    if isinstance(state, dict):
        # Training checkpoints nest the weights; prefer the EMA copy, as timm does.
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a mapping of parameter names to tensors")
    return timm.models.clean_state_dict(state)


def _names(cfg_value) -> tuple[str, ...]:
    if not cfg_value:
        return ()
    return (cfg_value,) if isinstance(cfg_value, str) else tuple(cfg_value)


def load_weights(model: nn.Module, name: str, path: str, in_chans: int) -> None:
    """Load ``path`` into the headless timm ``model``; refuse (UserError) anything that does not fit exactly."""
    state = read_state_dict(path)
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, model)
        except Exception as exc:  # a family converter failing means the file is not for this family
            raise UserError(f"checkpoint {path} cannot be converted for timm model '{name}': {exc}") from None
    wanted = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    for classifier in _names(cfg.get("classifier")):
        for suffix in (".weight", ".bias"):
            if classifier + suffix not in wanted:
                state.pop(classifier + suffix, None)
    for conv in _names(cfg.get("first_conv")):
        key = conv + ".weight"
        if key in state and key in wanted and state[key].ndim == 4 and state[key].shape[1] != wanted[key].shape[1]:
            state[key] = timm.models.adapt_input_conv(in_chans, state[key], base_chans=state[key].shape[1])
    mismatched = [k for k in state if k in wanted and state[k].shape != wanted[k].shape]
    if mismatched:
        raise UserError(f"checkpoint {path} does not fit timm model '{name}': "
                        f"{len(mismatched)} keys of another shape (e.g. {mismatched[0]})")
    # strict=False only to collect the differences in one go (torch itself fills keys it can default, such as
    # BatchNorm's num_batches_tracked); any difference left refuses the file, and the half-built model is dropped.
    result = model.load_state_dict(state, strict=False)
    problems = [f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in
                (("missing keys", result.missing_keys), ("unexpected keys", result.unexpected_keys)) if keys]
    if problems:
        raise UserError(f"checkpoint {path} does not fit timm model '{name}': {'; '.join(problems)}")


# ----------------------------------------------------------------- the module
class Backbone(nn.Module):
    """Any timm model as a feature extractor returning the final spatial map (no global pooling)."""

    def __init__(self, name: str, pretrained: bool = False, checkpoint_path: str | None = None,
                 in_chans: int = 3, drop_path_rate: float = 0.0, drop_rate: float = 0.0, **timm_kwargs):
        """``timm_kwargs`` go to ``timm.create_model`` (e.g. ``img_size=`` for a ViT).

        ``checkpoint_path`` is the weights file used when ``pretrained`` is true;
        with ``pretrained=False`` the model is randomly initialised.
        """
        super().__init__()
        self.name = name
        self.in_chans = in_chans
        self.model = _create_timm_model(name, in_chans, drop_path_rate, drop_rate, timm_kwargs)
        if pretrained:
            path = str(checkpoint_path) if checkpoint_path else find_local_weights(self.model)
            if path is None:
                raise UserError(missing_weights_message(name))
            load_weights(self.model, name, path, in_chans)
            self.weights_source = path
        else:
            if checkpoint_path:
                log.warning("model.checkpoint_path is ignored because model.pretrained is false")
            self.weights_source = None
        self.num_features = int(self.model.num_features)
        self.frozen_unused: list[str] = []
        self.layout = self._detect_layout()
        self._freeze_unused_parameters()

    # --------------------------------------------------------------- layouts
    def _probe_size(self) -> tuple[int, int]:
        """An input size the model accepts: its fixed patch-grid size if any, else its default size."""
        patch_embed = getattr(self.model, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None)
        if size is not None:
            return tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        input_size = (getattr(self.model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
        return int(input_size[-2]), int(input_size[-1])

    def _meta_forward_features(self, size: tuple[int, int], parameters: dict) -> Tensor:
        """``forward_features`` on the meta device: shapes only, no compute, real weights and stats untouched."""
        buffers = {n: torch.empty_like(b, device="meta") for n, b in self.model.named_buffers()}
        x = torch.empty(1, self.in_chans, *size, device="meta")
        swapped = {f"model.{n}": t for n, t in {**parameters, **buffers}.items()}
        return functional_call(_ForwardFeatures(self.model), swapped, (x,))

    def _detect_layout(self) -> str:
        parameters = {n: torch.empty_like(p, device="meta") for n, p in self.model.named_parameters()}
        size = self._probe_size()
        try:
            with torch.no_grad():
                out = self._meta_forward_features(size, parameters)
        except Exception as exc:
            raise UserError(f"timm model '{self.name}' cannot run at {size[0]}x{size[1]} px: {exc}") from None
        fmt = getattr(self.model, "output_fmt", "NCHW")
        if out.ndim == 4 and fmt == "NHWC" and out.shape[-1] == self.num_features:
            return "NHWC"
        if out.ndim == 4 and out.shape[1] == self.num_features:
            return "NCHW"
        patch_embed = getattr(self.model, "patch_embed", None)
        if out.ndim == 3 and out.shape[-1] == self.num_features and hasattr(patch_embed, "dynamic_feat_size"):
            return "tokens"
        raise UserError(
            f"timm model '{self.name}' returns features of shape {tuple(out.shape)} that are not a spatial map; "
            f"supported: CNNs ([B,C,h,w]), NHWC models (Swin) and ViT-style patch-token models"
        )

    def _freeze_unused_parameters(self) -> None:
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        try:
            # also when the model is built under no_grad / inference_mode (a frozen backbone loaded for features)
            with torch.inference_mode(False), torch.enable_grad():
                meta = {n: torch.empty_like(p, device="meta").requires_grad_(n in trainable)
                        for n, p in self.model.named_parameters()}
                out = self._meta_forward_features(self._probe_size(), meta)
                grads = torch.autograd.grad(out.float().sum(), [meta[n] for n in trainable], allow_unused=True)
        except RuntimeError as exc:  # a family that cannot run on the meta device: keep everything trainable
            log.warning("could not find unused parameters of %s on the meta device: %s", self.name, exc)
            return
        self.frozen_unused = sorted(n for n, g in zip(trainable, grads) if g is None)
        for n in self.frozen_unused:
            trainable[n].requires_grad_(False)

    def _to_map(self, features: Tensor, image_hw: tuple[int, int]) -> Tensor:
        if self.layout == "NCHW":
            return features
        if self.layout == "NHWC":
            return features.permute(0, 3, 1, 2)
        patches = features[:, int(getattr(self.model, "num_prefix_tokens", 0)):]
        h, w = self.model.patch_embed.dynamic_feat_size(tuple(image_hw))
        return patches.transpose(1, 2).reshape(features.shape[0], features.shape[-1], h, w)

    # --------------------------------------------------------------- public API
    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` images -> ``[B, num_features, h, w]`` map."""
        return self._to_map(self.model.forward_features(x), x.shape[-2:])

    def layer_ids(self) -> dict[str, int]:
        """Depth of each parameter from the timm model's own ``group_matcher`` (``train.layer_decay``)."""
        from .layer_groups import layer_ids

        if not hasattr(self.model, "group_matcher"):
            raise UserError(f"train.layer_decay: timm model '{self.name}' does not group its layers (no "
                            f"group_matcher); set train.layer_decay=1.0")
        return layer_ids(self.model, self.model.group_matcher(coarse=False), "model.")

    def feature_shape(self, image_size: int | tuple[int, int]) -> tuple[int, int, int]:
        """``(C, h, w)`` of the map for a square (or ``(H, W)``) input, from a dry run on the meta device."""
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        parameters = {n: torch.empty_like(p, device="meta") for n, p in self.model.named_parameters()}
        try:
            with torch.no_grad():
                out = self._to_map(self._meta_forward_features(size, parameters), size)
        except Exception as exc:  # e.g. a ViT built for another input size
            raise UserError(f"timm model '{self.name}' cannot take {size[0]}x{size[1]} px images ({exc}); "
                            f"ViT-style models need img_size set to the image size") from None
        return tuple(int(d) for d in out.shape[1:])


class _ForwardFeatures(nn.Module):
    """Exposes ``forward_features`` as ``forward`` so ``functional_call`` can run it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


def create_backbone(name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kw) -> nn.Module:
    """Build the map extractor an encoder spec names (``timm:NAME`` / bare name: a :class:`Backbone`, see its
    docstring for ``kw``; ``hf:...`` and the others: :mod:`chexfusion.models.encoders`)."""
    from .encoders import build_encoder

    return build_encoder(name, pretrained=pretrained, checkpoint_path=checkpoint_path, **kw)
