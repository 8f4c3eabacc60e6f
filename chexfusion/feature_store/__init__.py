"""The Parquet feature store: per-image stage-1 feature maps, written once, read by stage 2 every epoch.

Public API::

    build_store(features_cfg, splits, accelerator=None) -> Path        # write / resume / refresh a store
    FeatureStore(path)                                                 # open a complete store
        .check_matches(FeatureStore.expected_from_config(cfg, splits))  # refuse a stale one
        .load_split(split) -> SplitFeatures                            # in memory
        .iter_studies(split, shuffle_buffer, seed, epoch)              # streamed, whole studies
        .split_metadata(split) -> SplitMetadata                        # ids, views, study bounds; no maps
        .verify()                                                      # shard checksums

Layout and contract: ``schema.py`` (columns, Parquet settings), ``manifest.py``
(what a store records and how staleness is decided), ``writer.py`` (order,
shards, resume). Importing this package does not import torch; writing does.
"""

from .config import FeatureConfig
from .manifest import expected_from_config
from .reader import FeatureStore, SplitFeatures, SplitMetadata, StreamStats, StudyFeatures


def build_store(features_cfg, splits, accelerator=None, progress: bool = True):
    """Write (or finish, or refresh) the store; see :func:`chexfusion.feature_store.writer.build_store`."""
    from .writer import build_store as _build_store

    return _build_store(features_cfg, splits, accelerator=accelerator, progress=progress)


__all__ = ["FeatureConfig", "FeatureStore", "SplitFeatures", "SplitMetadata", "StudyFeatures", "StreamStats",
           "build_store", "expected_from_config"]
