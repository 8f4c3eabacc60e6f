"""``chexfusion stage1``: train the image-level model (noisy-student rounds when configured)."""

from __future__ import annotations

from ..config import load_config
from .config import Stage1Config

DEFAULT_CONFIG = "stage1/config.yaml"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG} if it exists)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config entries (dotted keys)")


def resolve_config_path(path, default):
    from pathlib import Path

    if path is not None:
        return path
    return default if Path(default).is_file() else None


def train(cfg: Stage1Config) -> dict:
    """Train (or resume, or report) the configured stage-1 run, noisy-student rounds included; its metrics."""
    if cfg.noisy_student.rounds:
        from .noisy_student import train_noisy_student

        return train_noisy_student(cfg)
    from .train import train_stage1

    return train_stage1(cfg)


def run(args) -> int:
    from ..hub import network_scope

    cfg = load_config(Stage1Config, resolve_config_path(args.config, DEFAULT_CONFIG), args.overrides)
    with network_scope(cfg.model.allow_network):
        train(cfg)
    return 0
