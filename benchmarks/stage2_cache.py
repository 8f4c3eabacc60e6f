"""Stage-2 epoch time from the feature store against recomputing the frozen backbone for every batch.

The public CheXFusion implementation trains its fusion model on images: every
batch of studies is decoded from the JPEGs and pushed through the frozen
stage-1 backbone again, every epoch. chexfusion computes the maps once
(``chexfusion features``) and stage 2 reads them from the Parquet store. This
benchmark times one training epoch of the demo stage-2 config both ways, on the
same studies in the same order, with the same model, loss and optimizer:

- store: ``FeatureStore.load_split`` (once, timed separately as
  ``store_load_seconds``) -> ``StudyItems`` + ``collate_studies`` ->
  ``StudyFusion`` forward/backward (weighted ASL) -> AdamW step;
- recompute: per batch, each study's images (the same rows, at most
  ``max_images``) decoded by ``ImageDataset`` with the stage-1 run's
  preprocessing, the frozen backbone forward (``FeatureExtractor.maps``, which
  also rounds to the store dtype, so both sides feed the fusion model the same
  numbers), padded by ``collate_studies`` -> the same fusion step. Only real
  images go through the backbone (no padding images), which favours this side.

Data: ``chexfusion synth --studies 300 --image-size 256`` with a one-epoch
stage-1 run (convnext_atto, 128 px) and its store, built once under
benchmarks/out/. Both sides use ``--threads`` torch threads and the demo
config's data-loader workers; they alternate after one untimed round; medians.

Last line of stdout: one JSON object with ``ratio`` (recompute epoch seconds
over store epoch seconds). Target: ratio >= 20 on the demo config.

    python benchmarks/stage2_cache.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import support

TARGET = 20.0


class RawStudies:
    """Studies as lists of decoded images (what an image-based stage 2 loads per step)."""

    def __init__(self, split, images, max_images: int):
        self.layout, self.images, self.max_images = split.layout, images, max_images
        self.csv_rows = self.layout.csv_rows

    def __len__(self) -> int:
        return len(self.layout)

    def __getitem__(self, i: int) -> dict:
        from chexfusion.data.views import VIEWS

        start = int(self.layout.study_starts[i])
        stop = min(int(self.layout.study_stops[i]), start + self.max_images)
        items = [self.images[int(r)] for r in self.csv_rows[start:stop]]
        return {"images": [it["image"] for it in items], "views": [VIEWS[it["view"]] for it in items],
                "view_index": [int(it["view"]) for it in items], "study": i}


def build(args):
    """Config, training split, the store's backbone, and the image dataset of the training CSV."""
    from chexfusion.config import load_config
    from chexfusion.data.cxr_lt import read_cxr_lt
    from chexfusion.data.image_dataset import ImageDataset
    from chexfusion.data.labels import LabelPolicy
    from chexfusion.feature_store import FeatureStore
    from chexfusion.feature_store.extract import FeatureExtractor
    from chexfusion.stage2.config import Stage2Config
    from chexfusion.stage2.store import stage1_classes
    from chexfusion.stage2.studies import MemorySource
    from chexfusion.stage2.train import Split

    data = support.demo_data(args.studies, 256)
    stage1 = support.stage1_run(data)
    store_path = support.feature_store(data, stage1)
    cfg = load_config(Stage2Config, support.REPO / "stage2" / "config.yaml",
                      [f"data.image_root={data}", f"data.train_csv={data / 'train.csv'}",
                       f"features.store={store_path}", f"features.shared_backbone={stage1}"])
    classes, prevalence = stage1_classes(cfg)
    policy = LabelPolicy(uncertain=cfg.data.uncertain_label, blank=cfg.data.blank_label)
    store = FeatureStore(store_path)
    started = time.perf_counter()
    source = MemorySource(store, "train", shuffle=True, seed=cfg.seed)
    split = Split(store, "train", source, cfg.data.train_csv, classes, policy, cfg.model.max_images)
    load_seconds = time.perf_counter() - started
    extractor = FeatureExtractor(store.manifest, "cpu")
    table = read_cxr_lt(cfg.data.train_csv, classes=[])
    images = ImageDataset(table, cfg.data.image_root, extractor.preprocess, None)
    return cfg, classes, prevalence, store, split, load_seconds, extractor, images


def fusion_parts(cfg, classes, prevalence, store):
    import torch

    from chexfusion import training
    from chexfusion.losses import build_loss
    from chexfusion.stage2.model import build_fusion_model

    torch.manual_seed(cfg.seed)
    model = build_fusion_model(cfg, len(classes), store.shape).train()
    optimizer = torch.optim.AdamW(training.param_groups(model, cfg.train.weight_decay, cfg.train.lr), lr=cfg.train.lr)
    return model, optimizer, build_loss(cfg.loss.name, cfg.loss.params, prevalence)


def step(model, optimizer, loss_fn, batch) -> None:
    logits = model(batch["features"], batch["views"], batch["image_mask"])
    loss_fn(logits.float(), batch["target"], batch["mask"]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def store_epoch(parts, split, cfg, threads: int) -> float:
    import torch

    from chexfusion.stage2.studies import collate_studies

    support.set_threads(threads)
    model, optimizer, loss_fn = fusion_parts(*parts)
    loader = torch.utils.data.DataLoader(split.dataset, batch_size=cfg.train.batch_size, drop_last=True,
                                         collate_fn=collate_studies, num_workers=cfg.train.num_workers)
    start = time.perf_counter()
    for batch in loader:
        step(model, optimizer, loss_fn, batch)
    return time.perf_counter() - start


def recompute_epoch(parts, split, cfg, extractor, images, threads: int) -> float:
    import numpy as np
    import torch

    from chexfusion.stage2.studies import StudyMaps, collate_studies
    from chexfusion.training import EpochPermutationSampler

    support.set_threads(threads)
    model, optimizer, loss_fn = fusion_parts(*parts)
    raw = RawStudies(split, images, cfg.model.max_images)
    loader = torch.utils.data.DataLoader(raw, batch_size=cfg.train.batch_size, drop_last=True,
                                         sampler=EpochPermutationSampler(len(raw), cfg.seed), collate_fn=list,
                                         num_workers=cfg.train.num_workers)
    start = time.perf_counter()
    for studies in loader:
        counts = [len(s["images"]) for s in studies]
        maps = extractor.maps(torch.stack([im for s in studies for im in s["images"]]),
                              [v for s in studies for v in s["views"]])
        items, offset = [], 0
        for s, n in zip(studies, counts):
            views = np.asarray(s["view_index"], dtype=np.int64)
            items.append(split.dataset.item(StudyMaps(s["study"], maps[offset:offset + n].numpy(), views)))
            offset += n
        step(model, optimizer, loss_fn, collate_studies(items))
    return time.perf_counter() - start


def flop_estimate(parts, split, cfg, extractor) -> dict:
    """Matmul/conv FLOPs of one epoch on each side, counted by torch's FlopCounterMode on forward passes: the
    backbone per image, the fusion model on the epoch's first batch times the number of steps, its training step
    taken as 3x its forward (the usual forward + backward rule; the counter's own backward count is wrong for
    grouped convolutions). Their ratio bounds what the cache can save: the store side still pays for the fusion."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from chexfusion.stage2.studies import collate_studies
    from chexfusion.training import EpochPermutationSampler

    size = extractor.preprocess.image_size
    backbone = next(iter(extractor.routed.backbones.values()))
    with FlopCounterMode(display=False) as counter:
        backbone(torch.zeros(1, extractor.preprocess.channels, size, size))
    per_image = counter.get_total_flops()
    steps = len(split.dataset) // cfg.train.batch_size
    order = list(EpochPermutationSampler(len(split.dataset), cfg.seed))[: steps * cfg.train.batch_size]
    f = split.layout
    images = int(np.minimum(f.study_stops[order] - f.study_starts[order], cfg.model.max_images).sum())
    model = fusion_parts(*parts)[0]
    split.dataset.set_epoch(0)  # the first batch of epoch 0: the first studies of ``order``
    batch = next(iter(torch.utils.data.DataLoader(split.dataset, batch_size=cfg.train.batch_size,
                                                  collate_fn=collate_studies)))
    with FlopCounterMode(display=False) as counter:
        model(batch["features"], batch["views"], batch["image_mask"])
    per_step = 3 * counter.get_total_flops()
    backbone_epoch, fusion_epoch = per_image * images, per_step * steps
    return {"backbone_gflop_per_image": round(per_image / 1e9, 4),
            "fusion_train_gflop_per_step": round(per_step / 1e9, 3),
            "backbone_gflop_per_epoch": round(backbone_epoch / 1e9, 2),
            "fusion_gflop_per_epoch": round(fusion_epoch / 1e9, 2),
            "flop_ratio_bound": round((backbone_epoch + fusion_epoch) / fusion_epoch, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--studies", type=int, default=300, help="size of the synthetic demo dataset")
    args = parser.parse_args(argv)

    cfg, classes, prevalence, store, split, load_seconds, extractor, images = build(args)
    parts = (cfg, classes, prevalence, store)
    times = support.interleaved({"store": lambda: store_epoch(parts, split, cfg, args.threads),
                                 "recompute": lambda: recompute_epoch(parts, split, cfg, extractor, images,
                                                                      args.threads)},
                                args.repeats, warmup=1)
    store_s, recompute_s = statistics.median(times["store"]), statistics.median(times["recompute"])
    steps = len(split.dataset) // cfg.train.batch_size
    studies = steps * cfg.train.batch_size
    ratio = recompute_s / store_s
    flops = flop_estimate(parts, split, cfg, extractor)
    result = {
        "ratio": round(ratio, 2),
        "target": TARGET,
        "meets_target": bool(ratio >= TARGET),
        "store_epoch_seconds": round(store_s, 4),
        "recompute_epoch_seconds": round(recompute_s, 3),
        "store_load_seconds": round(load_seconds, 4),
        "ratio_with_store_load": round(recompute_s / (store_s + load_seconds), 2),
        **flops,
        "store_studies_per_s": round(studies / store_s, 1),
        "recompute_studies_per_s": round(studies / recompute_s, 2),
        "store_seconds": [round(t, 4) for t in times["store"]],
        "recompute_seconds": [round(t, 3) for t in times["recompute"]],
        "studies_per_epoch": studies,
        "images_in_split": int(split.layout.num_images),
        "batch_size_studies": cfg.train.batch_size,
        "feature_shape": list(store.shape),
        "feature_dtype": store.manifest["dtype"],
        "backbone": store.manifest["backbones"]["shared"]["backbone"],
        "image_size": store.manifest["image_size"],
        "fusion": {"dim": cfg.model.dim, "layers": cfg.model.layers, "projection": cfg.model.projection},
        "num_workers": cfg.train.num_workers,
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": support.machine_info(),
    }
    print(f"stage-2 demo epoch: {studies} studies ({split.layout.num_images} images) in batches of "
          f"{cfg.train.batch_size}, "
          f"maps {tuple(store.shape)} {store.manifest['dtype']} from {result['backbone']} at "
          f"{result['image_size']} px; {args.threads} thread(s), median of {args.repeats} interleaved epochs")
    print(f"from the store:        {store_s:8.3f} s per epoch (loading the split once: {load_seconds:.3f} s)")
    print(f"recomputing backbone:  {recompute_s:8.3f} s per epoch")
    print(f"ratio {ratio:.1f} (target >= {TARGET}); counting the store load in one epoch: "
          f"{result['ratio_with_store_load']:.1f}")
    print(f"FLOPs per epoch: backbone forward {flops['backbone_gflop_per_epoch']} G, fusion forward+backward "
          f"{flops['fusion_gflop_per_epoch']} G -> the cache can save at most a factor "
          f"{flops['flop_ratio_bound']} on this config")
    if ratio < TARGET:
        result["note"] = (f"demo config: the fusion model's training ({flops['fusion_gflop_per_epoch']} GFLOP per "
                          f"epoch) "
                          f"costs about as much as the {result['backbone']} {result['image_size']} px backbone forward "
                          f"that the cache saves ({flops['backbone_gflop_per_epoch']} GFLOP), so by FLOPs the cache "
                          f"can gain about {flops['flop_ratio_bound']}x here; the full recipe: docs/scale.md")
    support.write_result("stage2_cache", result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
