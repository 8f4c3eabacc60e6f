"""Stage-1 training throughput: the product's epoch loop against a bare timm + AdamW loop on the same model and data.

What the product adds around the model -- accelerate (prepared model, data
loader and scheduler, ``accumulate``, ``backward``), the deterministic epoch
sampler, the masked weighted ASL loss, the cosine schedule, EMA hooks, the
progress bar, per-step ``loss.item()``, checkpoint logic -- should cost little
next to the backbone's forward and backward.

- product: ``chexfusion.stage1.train.train_stage1`` on ``stage1/config.yaml``
  (convnext_atto, 128 px, batch 32, weighted ASL) for one epoch; its time is
  the ``train_seconds`` that ``fit`` records in ``history.jsonl`` (the training
  loop only: validation, checkpointing and the final evaluation are left out).
- bare: the same ``ImageClassifier`` (timm backbone + the same ML-Decoder),
  the same ``ImageDataset`` decode and ``AugmentedDataset`` augmentation,
  ``DataLoader`` with the same batch size and worker count, ``torch.optim.AdamW``
  and plain BCE, nothing else.

Data: the first ``--images`` rows of the demo training CSV (whole batches, so
neither side has a partial last batch) from ``chexfusion synth --studies 300
--image-size 256`` built once under benchmarks/out/; validation on 8 images
(its cost is not timed, only kept short). Each side builds a fresh model per
epoch; the sides alternate (product, bare, product, ...) after one untimed
round, all at ``--threads`` torch threads, and the figures are medians.
``--profile`` adds a cProfile of one product epoch (top functions by own time).

Last line of stdout: one JSON object with ``ratio`` (product images/s over bare
images/s). Target: ratio >= 0.85.

    python benchmarks/stage1_throughput.py [--images 192] [--repeats 3] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import support

TARGET = 0.85
VALIDATION_IMAGES = 8


def load_cfg(data: Path, work: Path, images: int):
    from chexfusion.config import load_config
    from chexfusion.stage1.config import Stage1Config

    cfg = load_config(Stage1Config, support.REPO / "stage1" / "config.yaml", [f"data.image_root={data}"])
    train_csv = support.subset_csv(data / "train.csv", images, work / "train.csv")
    val_csv = support.subset_csv(data / "development.csv", VALIDATION_IMAGES, work / "development.csv")
    cfg.data = replace(cfg.data, train_csv=str(train_csv), val_csv=str(val_csv), test_csv=None)
    cfg.train = replace(cfg.train, epochs=1)
    cfg.output_dir = str(work / "runs")
    if images % cfg.train.batch_size:
        raise SystemExit(f"--images must be a multiple of the batch size {cfg.train.batch_size}")
    return cfg


def product_epoch(cfg, threads: int, name: str) -> float:
    """One epoch of the real stage-1 loop in a new run folder; the seconds ``fit`` measured for its training loop."""
    from chexfusion.stage1.train import train_stage1

    run_cfg = replace(cfg, name=name)
    support.set_threads(threads)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        train_stage1(run_cfg)
    history = Path(run_cfg.output_dir, run_cfg.name, "history.jsonl").read_text().splitlines()
    return float(json.loads(history[-1])["train_seconds"])


def bare_epoch(cfg, threads: int) -> float:
    """One epoch of a plain loop over the same model, decode, augmentation and batch size."""
    import torch
    import torch.nn.functional as F

    from chexfusion.data.augment import AugmentedDataset, RadiographAugment
    from chexfusion.data.cxr_lt import read_cxr_lt
    from chexfusion.data.image_dataset import ImageDataset
    from chexfusion.data.images import Preprocess
    from chexfusion.data.labels import LabelPolicy
    from chexfusion.stage1.model import build_image_model

    support.set_threads(threads)
    torch.manual_seed(cfg.seed)
    table = read_cxr_lt(cfg.data.train_csv, require_labels=True)
    pre = Preprocess(image_size=cfg.data.image_size, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std))
    policy = LabelPolicy(uncertain=cfg.data.uncertain_label, blank=cfg.data.blank_label)
    dataset = AugmentedDataset(ImageDataset(table, cfg.data.image_root, pre, policy), RadiographAugment(cfg.augment),
                               cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                         num_workers=cfg.train.num_workers)
    model = build_image_model(cfg, num_classes=len(table.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model.train()
    start = time.perf_counter()
    for batch in loader:
        loss = F.binary_cross_entropy_with_logits(model(batch["image"]), batch["target"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def profile_product(cfg, threads: int, top: int = 15) -> list[dict]:
    """cProfile of one product epoch: the functions with the most own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    product_epoch(cfg, threads, "profiled")
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (file, line, func), (_, calls, own, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}:{func}", "calls": calls, "own_s": round(own, 3),
                     "cumulative_s": round(cumulative, 3)})
    return sorted(rows, key=lambda r: -r["own_s"])[:top]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=192, help="training images per epoch (whole batches of 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--studies", type=int, default=300, help="size of the synthetic demo dataset")
    parser.add_argument("--profile", action="store_true", help="also profile one product epoch")
    args = parser.parse_args(argv)

    data = support.demo_data(args.studies, 256)
    with tempfile.TemporaryDirectory(dir=support.OUT) as tmp:
        work = Path(tmp)
        cfg = load_cfg(data, work, args.images)
        names = (f"product-{i}" for i in range(args.repeats + 1))
        times = support.interleaved({"product": lambda: product_epoch(cfg, args.threads, next(names)),
                                     "bare": lambda: bare_epoch(cfg, args.threads)}, args.repeats, warmup=1)
        profile = profile_product(cfg, args.threads) if args.profile else None

    product_rate = support.median_rate(args.images, times["product"])
    bare_rate = support.median_rate(args.images, times["bare"])
    ratio = product_rate / bare_rate
    result = {
        "ratio": round(ratio, 3),
        "target": TARGET,
        "meets_target": bool(ratio >= TARGET),
        "product_images_per_s": round(product_rate, 2),
        "bare_images_per_s": round(bare_rate, 2),
        "product_seconds": [round(t, 2) for t in times["product"]],
        "bare_seconds": [round(t, 2) for t in times["bare"]],
        "images_per_epoch": args.images,
        "batch_size": cfg.train.batch_size,
        "backbone": cfg.model.backbone,
        "image_size": cfg.data.image_size,
        "loss_product": cfg.loss.name,
        "num_workers": cfg.train.num_workers,
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": support.machine_info(),
    }
    if profile is not None:
        result["profile_top_own_time"] = profile
        print("product epoch profile, top functions by own time:")
        for row in profile:
            print(f"  {row['own_s']:8.3f} s own {row['cumulative_s']:8.3f} s cum {row['calls']:7d} calls  "
                  f"{row['function']}")
    print(f"{cfg.model.backbone} at {cfg.data.image_size} px, batch {cfg.train.batch_size}, {args.images} images per "
          f"epoch, {args.threads} thread(s), median of {args.repeats} interleaved epochs")
    print(f"product (train_stage1): {product_rate:7.2f} images/s  {result['product_seconds']}")
    print(f"bare timm + AdamW:      {bare_rate:7.2f} images/s  {result['bare_seconds']}")
    print(f"ratio {ratio:.3f} (target >= {TARGET})")
    support.write_result("stage1_throughput", result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
