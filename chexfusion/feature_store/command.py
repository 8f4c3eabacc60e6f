"""``chexfusion features``: write the Parquet feature store described by the stage-2 config's ``features:``.

The splits are the stage-2 data config's: ``train`` (data.train_csv), ``val``
(data.val_csv) and, when set, ``test`` (data.test_csv), all under
data.image_root. Re-running resumes an interrupted store, rebuilds one made
from other backbones or CSVs, and does nothing to a complete, current one.
"""

from __future__ import annotations

from ..config import load_config
from ..io import check_output_folder

DEFAULT_CONFIG = "stage2/config.yaml"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help=f"stage-2 YAML config (default: {DEFAULT_CONFIG} if it exists)")
    parser.add_argument("--verify", action="store_true", help="also check every shard against its checksum")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config entries (dotted keys)")


def write_features(cfg, verify: bool = False):
    """Write (or finish, or refresh) the store a stage-2 config names; the open store."""
    from ..stage2.store import store_splits
    from . import FeatureStore, build_store

    cfg.features.validate()
    check_output_folder(cfg.features.store, "features.store")
    store = FeatureStore(build_store(cfg.features, store_splits(cfg)))
    if verify:
        store.verify()
    return store


def run(args) -> int:
    from accelerate import PartialState

    from ..hub import network_scope
    from ..stage1.command import resolve_config_path
    from ..stage2.config import Stage2Config
    from .reader import describe

    cfg = load_config(Stage2Config, resolve_config_path(args.config, DEFAULT_CONFIG), args.overrides)
    with network_scope(cfg.features.allow_network):
        store = write_features(cfg, args.verify)
    if PartialState().is_main_process:
        print(describe(store))
    return 0
