"""The stage-1 max-over-images baseline: each stage-1 head applied to the cached maps, a study scored by its max.

Stage 2 reports it next to its own metrics, on the same cached maps and the
same images, so the gain of fusing a study's views is measured against the
model that produced the maps. It is skipped (an empty result) when the store
was pooled (the stage-1 head was trained on full maps) or when the stage-1 run
was trained on other classes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.views import VIEWS
from ..feature_store.routing import route_view
from ..feature_store.sources import slot_classes
from ..metrics import compute_metrics
from ..stage1.model import load_stage1_run

BATCH_IMAGES = 256  # images per forward pass of a stage-1 head


@torch.no_grad()
def stage1_baseline(cfg, store, splits: dict, classes: list[str], prevalence, device) -> dict:
    """Image-level metrics of the stage-1 study score (max over a study's images) on val and test, if comparable."""
    out = {}
    for split_name, key in (("val", "validation"), ("test", "test")):
        if split_name not in splits:
            continue
        split = splits[split_name]
        probs = image_probs(cfg, store, split.source, classes, device)
        if probs is None:
            return {}
        study_max = np.maximum.reduceat(probs, split.layout.study_starts, axis=0)
        out[key] = compute_metrics(split.image_targets, study_max[split.image_study], classes,
                                   train_prevalence=prevalence, mask=split.image_mask)
    return out


@torch.no_grad()
def image_probs(cfg, store, source, classes: list[str], device) -> np.ndarray | None:
    """Per-image probabilities of the stage-1 head(s) on the cached maps of ``source`` (None if not comparable)."""
    if store.manifest.get("pool") or any(slot_classes(p) is None for p in cfg.features.backbone_slots().values()):
        return None  # the stage-1 head was trained on full maps; a frozen encoder has no head
    runs = {slot: load_stage1_run(path, str(device)) for slot, path in cfg.features.backbone_slots().items()}
    if any(r.classes != list(classes) for r in runs.values()):
        return None
    layout = source.layout
    slots = np.array([route_view(VIEWS[v], cfg.features.routing, cfg.features.unknown_view) for v in layout.views])
    out = np.zeros((len(slots), len(classes)), np.float32)
    for slot, rows, maps in slot_batches(source, slots, list(runs)):
        logits = runs[slot].model.classify_map(torch.from_numpy(maps).view(-1, *store.shape).to(device))
        out[rows] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def slot_batches(source, slots: np.ndarray, names: list[str], size: int = BATCH_IMAGES):
    """(slot, rows, maps) in batches of ``size`` images of one slot, each slot's rows in store order.

    Gathered while the source yields its studies in store order, holding at most
    a batch per slot, so a streamed split needs no more memory than streaming.
    """
    starts = source.layout.study_starts
    pending = {slot: ([], []) for slot in names}
    for study in source.studies():
        rows = np.arange(int(starts[study.index]), int(starts[study.index]) + len(study.views))
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
