"""``chexfusion clip``: contrastive image-report training (CLIP; CXR-CML with ``loss.cml_weight`` > 0)."""

from __future__ import annotations

DEFAULT_CONFIG = "stage1/clip.yaml"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG} if it exists)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config entries (dotted keys)")


def run(args) -> int:
    from ..config import load_config
    from ..stage1.command import resolve_config_path
    from .config import ClipConfig
    from .train import train_clip

    train_clip(load_config(ClipConfig, resolve_config_path(args.config, DEFAULT_CONFIG), args.overrides))
    return 0
