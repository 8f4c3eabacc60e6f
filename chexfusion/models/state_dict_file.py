"""The one weights file of a model folder that holds a plain state dict (open_clip:, xrv: encoders).

CheXzero and torchxrayvision publish PyTorch files, not safetensors. A folder may therefore hold
either ``*.safetensors`` or one ``*.pt`` / ``*.pth`` / ``*.bin`` state dict; the latter is read
with ``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a
container of tensors (torchxrayvision's DenseNet files, whole pickled models, arbitrary code). A
folder is checked when it is resolved, before anything is built or written, so a pickle payload is
one line, never a half-made feature store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import UserError
from ..io import file_sha256

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
PATTERNS = ("*.safetensors",) + tuple(f"*{suffix}" for suffix in TORCH_SUFFIXES)


def state_dict_file(folder: Path, what: str) -> Path:
    """The folder's weights file (safetensors first), checked readable without unpickling objects."""
    folder = Path(folder)
    safetensors = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    found = safetensors or sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in TORCH_SUFFIXES)
    if not found:
        raise UserError(f"{what}: {folder} holds no weights (*.safetensors, or a state dict as *.pt / *.pth / *.bin)")
    if len(found) > 1:
        raise UserError(f"{what}: {folder} holds several weight files ({found[0].name}, {found[1].name}): keep one")
    if found[0].suffix in TORCH_SUFFIXES:
        check_weights_only(found[0], what)
    return found[0]


def check_weights_only(path: Path, what: str) -> None:
    """Refuse a PyTorch file that is not a plain state dict: memory-mapped, so a large file costs little to check."""
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # an old (non-zip) file cannot be mapped: read it whole
                raise
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for a pickle payload or a damaged file
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{what}: {path} is not a plain state dict, so it is not loaded (chexfusion never unpickles "
                        f"objects; save model.state_dict() or safetensors): {first_line}") from None


def state_dict_sha256(path: Path) -> str:
    """The identity a feature store records: one sha256 over the weights file's name and content."""
    return hashlib.sha256(f"{Path(path).name}:{file_sha256(path)}\n".encode()).hexdigest()
