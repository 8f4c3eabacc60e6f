"""What stage 2 needs from the stage-1 runs and the feature store: its classes and a checked store."""

from __future__ import annotations

import numpy as np

from ..data.cxr_lt import read_cxr_lt
from ..data.labels import LabelPolicy
from ..errors import UserError
from ..feature_store import FeatureStore
from ..feature_store.sources import slot_classes


def store_splits(cfg) -> dict[str, tuple[str, str]]:
    """Split name -> (CSV, image root) for the store, from the stage-2 data config."""
    splits = {"train": (cfg.data.train_csv, cfg.data.image_root), "val": (cfg.data.val_csv, cfg.data.image_root)}
    if cfg.data.test_csv:
        splits["test"] = (cfg.data.test_csv, cfg.data.image_root)
    return splits


def open_store_for(cfg) -> FeatureStore:
    """The configured store, refused with one clear line when it was not made from these backbones and CSVs."""
    store = FeatureStore(cfg.features.store)
    store.check_matches(FeatureStore.expected_from_config(cfg.features, store_splits(cfg)))
    return store


def stage1_classes(cfg) -> tuple[list[str], np.ndarray]:
    """Classes (the stage-1 run's unless the config names them) and their training prevalence."""
    runs = cfg.features.backbone_slots()
    lists = {slot: found for slot, path in runs.items() if (found := slot_classes(path)) is not None}
    first = next(iter(lists.values()), None)
    if any(c != first for c in lists.values()):
        raise UserError("the per-view stage-1 runs were trained on different class lists: "
                        + ", ".join(f"{s}: {len(c)} classes" for s, c in lists.items()))
    # a frozen encoder has no classes: the config's, else every label column of the training CSV
    classes = cfg.data.classes or first or read_cxr_lt(cfg.data.train_csv, require_labels=True).classes
    policy = LabelPolicy(uncertain=cfg.data.uncertain_label, blank=cfg.data.blank_label)
    prevalence = read_cxr_lt(cfg.data.train_csv, classes=classes, require_labels=True).prevalence(policy)
    return list(classes), prevalence
