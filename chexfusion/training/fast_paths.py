"""The GPU fast paths a user switches on in ``train.*``: channels_last, torch.compile, pinned memory, persistent
DataLoader workers.

All are off or inert on a CPU run with the default config, so that the demo's weights do not change: pinned memory
only takes effect where CUDA is present, persistent workers only with ``num_workers`` > 0, and channels_last and
compile are opt-in (compile's first steps are slow, and channels_last pays off with tensor cores, not on a laptop).
"""

from __future__ import annotations

import torch

from ..errors import UserError


def loader_options(cfg) -> dict:
    """DataLoader keyword arguments from ``train.pin_memory`` / ``train.persistent_workers`` (an OptimConfig).

    Pinned (page-locked) host memory lets the copy to the GPU run asynchronously; without CUDA there is nothing to
    pin for. A persistent worker keeps its dataset between epochs: the datasets that change per epoch read their
    epoch from shared memory (``data.shared_epoch``), so that is safe here.
    """
    return {"pin_memory": bool(cfg.pin_memory and torch.cuda.is_available()),
            "persistent_workers": bool(cfg.persistent_workers and cfg.num_workers > 0)}


def _inputs_channels_last(module, args):
    """Forward pre-hook: every 4-D tensor argument in channels_last memory format (the layout the weights have)."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4 else a
                 for a in args)


def apply_model_fast_paths(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """``train.channels_last`` and ``train.compile`` applied to ``model`` in place (returned for chaining).

    channels_last converts the 4-D weights and, through a forward pre-hook, the 4-D inputs (images, maps), so the
    convolutions run NHWC end to end. ``Module.compile`` compiles the forward in place: the parameter names (and so
    ``model.safetensors`` and the checkpoints) are those of the uncompiled model.
    """
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_inputs_channels_last)
    if cfg.compile:
        check_compile_available()
        model.compile()
    return model


def check_compile_available() -> None:
    """One clear line when this torch cannot compile (no ``torch.compile``, or no dynamo on this platform)."""
    import torch._dynamo

    if not hasattr(torch, "compile") or not hasattr(torch.nn.Module, "compile"):
        raise UserError(f"config key 'train.compile': torch {torch.__version__} has no torch.compile "
                        "(torch >= 2.2 needed); set train.compile=false")
    if not torch._dynamo.is_dynamo_supported():
        raise UserError("config key 'train.compile': torch.compile is not supported on this platform / Python; "
                        "set train.compile=false")
