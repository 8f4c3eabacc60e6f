"""``chexfusion stage2``: train the study-level fusion model from the feature store."""

from __future__ import annotations

from ..config import load_config
from ..stage1.command import resolve_config_path

DEFAULT_CONFIG = "stage2/config.yaml"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG} if it exists)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config entries (dotted keys)")


def run(args) -> int:
    from ..hub import network_scope
    from .config import Stage2Config
    from .train import train_stage2

    cfg = load_config(Stage2Config, resolve_config_path(args.config, DEFAULT_CONFIG), args.overrides)
    with network_scope(cfg.features.allow_network):
        train_stage2(cfg)
    return 0
