"""The inputs of benchmarks/scale_plan.py: the recipe's configs, its models' counted costs at full size, and
per-image costs measured on this machine (or read from the other benchmarks' results in benchmarks/out/)."""

from __future__ import annotations

import json
import statistics
import time

from .artifacts import OUT, REPO
from .model_costs import forward_cost, parameter_count
from .timing import interleaved

STAGE1_CONFIG = REPO / "stage1" / "cxr-lt.yaml"
STAGE2_CONFIG = REPO / "stage2" / "cxr-lt.yaml"
DTYPE_BYTES = {"float16": 2, "float32": 4}


# ---- counted ---------------------------------------------------------------------------------------------------


def load_configs():
    from chexfusion.config import load_config
    from chexfusion.stage1.config import Stage1Config
    from chexfusion.stage2.config import Stage2Config

    return load_config(Stage1Config, STAGE1_CONFIG), load_config(Stage2Config, STAGE2_CONFIG)


def study_size_mix() -> dict[int, float]:
    """Share of CXR-LT 2024 training studies by number of images (the shipped reference table)."""
    from chexfusion.resources import read_table

    rows = read_table("study_sizes_2024.csv")
    counts = {int(r["images_per_study"]): int(r["train_studies_2024"]) for r in rows}
    total = sum(counts.values())
    return {n: c / total for n, c in counts.items()}


def image_model_costs(s1, num_classes: int, sizes: list[int]) -> dict:
    """Backbone forward FLOPs, classifier forward FLOPs and training activations per image at each size (meta)."""
    import torch

    from chexfusion.stage1.model import build_image_model

    with torch.device("meta"):
        model = build_image_model(s1, num_classes, pretrained=False)
    out = {"params": parameter_count(model), "trainable_params": parameter_count(model, trainable_only=True),
           "feature_shape": list(model.backbone.feature_shape(s1.data.image_size))}
    for size in sizes:
        image = torch.zeros(1, 3, size, size, device="meta")
        backbone = forward_cost(model.backbone, image)
        model.train()
        whole = forward_cost(model, image)
        out[size] = {"backbone_flops": backbone.flops, "backbone_peak_module_bytes": backbone.peak_module_bytes,
                     "classifier_flops": whole.flops, "train_saved_bytes": whole.saved_bytes}
    return out


def fusion_model(s2, num_classes: int, feature_shape):
    from chexfusion.stage2.model import build_fusion_model

    return build_fusion_model(s2, num_classes, feature_shape).train()


def fusion_costs(s2, num_classes: int, feature_shape, sizes) -> dict:
    """Forward FLOPs and training activations of one study of n images, for each n (CPU tensors)."""
    import torch

    model = fusion_model(s2, num_classes, feature_shape)
    out = {"params": parameter_count(model)}
    for n in sizes:
        inputs = (torch.zeros(1, n, *feature_shape), torch.zeros(1, n, dtype=torch.long),
                  torch.ones(1, n, dtype=torch.bool))
        cost = forward_cost(model, *inputs)
        out[n] = {"flops": cost.flops, "saved_bytes": cost.saved_bytes}
    return out


# ---- measured ----------------------------------------------------------------------------------------------------


def measure_backbone_cpu(s1, num_classes: int, size: int, batch: int, repeats: int) -> dict:
    """Seconds per image on this CPU at ``size`` px: backbone forward (no_grad) and the classifier's training step
    (forward, backward, AdamW), interleaved, medians."""
    import torch
    import torch.nn.functional as F

    from chexfusion.stage1.model import build_image_model

    torch.manual_seed(0)
    model = build_image_model(s1, num_classes, pretrained=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images, targets = torch.randn(batch, 3, size, size), torch.zeros(batch, num_classes)

    def forward() -> float:
        model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            model.forward_features(images)
        return time.perf_counter() - start

    def train() -> float:
        model.train()
        start = time.perf_counter()
        F.binary_cross_entropy_with_logits(model(images), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = interleaved({"forward": forward, "train": train}, repeats, warmup=1)
    return {k: statistics.median(v) / batch for k, v in times.items()}


def measure_fusion_cpu(s2, num_classes: int, feature_shape, n_images: int, repeats: int) -> float:
    """Seconds of the fusion model's training step for one study of ``n_images`` on this CPU (median)."""
    import torch

    model = fusion_model(s2, num_classes, feature_shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = (torch.randn(1, n_images, *feature_shape), torch.zeros(1, n_images, dtype=torch.long),
              torch.ones(1, n_images, dtype=torch.bool))

    def step() -> float:
        start = time.perf_counter()
        model(*inputs).float().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return statistics.median(interleaved({"step": step}, repeats, warmup=1)["step"])


def measure_study_ordering(studies: int) -> float:
    """Seconds per study of ``feature_store.routing.study_ordered_rows`` (predict and feature extraction order rows
    by it)."""
    import numpy as np
    import pandas as pd

    from chexfusion.feature_store.routing import study_ordered_rows

    rng = np.random.default_rng(0)
    mix = study_size_mix()
    sizes = rng.choice(list(mix), size=studies, p=list(mix.values()))
    study = rng.permutation(np.repeat(np.arange(studies), sizes))
    frame = pd.DataFrame({"dicom_id": [f"{rng.integers(1 << 62):016x}" for _ in study],
                          "study_id": [f"5{s:07d}" for s in study],
                          "view": rng.choice(["frontal", "lateral", "unknown"], size=len(study), p=[.6, .36, .04])})
    start = time.perf_counter()
    study_ordered_rows(frame)
    return (time.perf_counter() - start) / studies


def read_benchmark(name: str) -> dict | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def store_row_overhead() -> float | None:
    """Bytes per row of a real store file beyond its maps (ids, view, split, Parquet pages), from the demo store."""
    import numpy as np

    for manifest in sorted((OUT / "features").glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        rows = sum(s["rows"] for s in m["splits"].values())
        files = sum(p.stat().st_size for p in manifest.parent.glob("*.parquet"))
        raw = rows * int(np.prod(m["shape"])) * DTYPE_BYTES[m["dtype"]]
        if rows:
            return (files - raw) / rows
    return None
