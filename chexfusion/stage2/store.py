"""What stage 2 needs from the stage-1 runs and the feature store: classes, a checked store, the baseline."""

from __future__ import annotations

import numpy as np
import torch

from ..data.cxr_lt import read_cxr_lt
from ..data.labels import LabelPolicy
from ..data.views import VIEWS
from ..errors import UserError
from ..feature_store import FeatureStore
from ..feature_store.routing import route_view
from ..feature_store.sources import slot_classes
from ..stage1.model import load_stage1_run

BASELINE_BATCH = 256  # images per forward pass of a stage-1 head


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


@torch.no_grad()
def baseline_image_probs(cfg, store, split, classes, device) -> np.ndarray | None:
    """Per-image probabilities of the stage-1 head(s) applied to the cached maps (None if not comparable)."""
    if store.manifest.get("pool") or any(slot_classes(p) is None for p in cfg.features.backbone_slots().values()):
        return None  # the stage-1 head was trained on full maps; a frozen encoder has no head
    runs = {slot: load_stage1_run(path, str(device)) for slot, path in cfg.features.backbone_slots().items()}
    if any(r.classes != list(classes) for r in runs.values()):
        return None
    views = [VIEWS[v] for v in split.layout.views]
    slots = np.array([route_view(v, cfg.features.routing, cfg.features.unknown_view) for v in views])
    out = np.zeros((len(views), len(classes)), np.float32)
    for slot, rows, maps in _slot_batches(store, split, slots, list(runs)):
        logits = runs[slot].model.classify_map(torch.from_numpy(maps).view(-1, *store.shape).to(device))
        out[rows] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def _slot_batches(store, split, slots: np.ndarray, names: list[str], size: int = BASELINE_BATCH):
    """(slot, rows, maps) in batches of ``size`` images of one slot, each slot's rows in store order.

    Taken from the split in memory, or gathered while streaming it in store order
    (holding at most a batch per slot): the same batches either way.
    """
    if split.features is not None:
        for slot in names:
            idx = np.flatnonzero(slots == slot)
            for start in range(0, len(idx), size):
                rows = idx[start:start + size]
                yield slot, rows, split.features.take(rows)
        return
    pending = {slot: ([], []) for slot in names}
    for study in store.iter_studies(split.name):
        start = int(split.layout.study_starts[study.index])
        rows = np.arange(start, start + len(study.views))
        for slot in names:
            sel = slots[rows] == slot
            if sel.any():
                pending[slot][0].append(rows[sel])
                pending[slot][1].append(study.features[sel].reshape(int(sel.sum()), -1))  # a copy
            while sum(len(r) for r in pending[slot][0]) >= size:
                yield (slot, *_take_batch(pending[slot], size))
    for slot in names:
        while pending[slot][0]:
            yield (slot, *_take_batch(pending[slot], size))


def _take_batch(pending: tuple[list, list], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` pending rows and maps; the rest stay pending."""
    rows, maps = np.concatenate(pending[0]), np.concatenate(pending[1])
    pending[0][:] = [rows[size:]] if len(rows) > size else []
    pending[1][:] = [maps[size:]] if len(rows) > size else []
    return rows[:size], maps[:size]
