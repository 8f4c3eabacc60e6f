"""``chexfusion predict`` throughput from raw JPEGs against the bare backbone forward on decoded tensors.

Study-level prediction decodes every image, runs it through the frozen
stage-1 backbone, rounds the map to the store dtype, and scores batches of
studies with the fusion model. The backbone forward is the part no
implementation can skip, so its rate on already-decoded tensors is the
yardstick.

- predict: ``Stage2Predictor.predict_table`` (what ``chexfusion predict``
  runs, minus reading the CSV and writing the output) on the first
  ``--images`` rows of the demo training CSV, batch ``--batch-size``, no TTA,
  progress bar off;
- bare: the forward pass of the same backbone module on the same images,
  decoded and stacked into batches of the same size beforehand, under
  ``torch.no_grad`` like predict;
- two experiments, not the product (each swaps one function of
  ``chexfusion.inference`` for the proposed version during its runs):
  ``predict_fast_order`` orders the rows by study with one vectorised sort
  (``group_studies``, the same order) instead of ``study_ordered_rows``'s
  pandas call per study; ``predict_fast_order_workers`` also gives the image
  ``DataLoader`` ``--workers`` worker processes, so JPEG decoding overlaps the
  forward pass (``image_batches`` has no ``num_workers`` argument today).

Data: ``chexfusion synth --studies 300 --image-size 256`` with one-epoch
stage-1 (convnext_atto, 128 px) and stage-2 demo runs, built once under
benchmarks/out/. All sides at ``--threads`` torch threads, alternating after
one untimed round; medians.

Last line of stdout: one JSON object with ``ratio`` (predict images/s over bare
images/s), ``ratio_fast_order`` and ``ratio_fast_order_workers``. Target: ratio >= 0.7.

    python benchmarks/predict_throughput.py [--images 192] [--batch-size 32] [--repeats 3] [--threads 1] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import support

TARGET = 0.7


def image_batches_with_workers(workers: int):
    """``inference.stage2.image_batches`` as it would be with a ``num_workers`` argument."""
    import torch

    from chexfusion.data.image_dataset import ImageDataset, collate_images

    def _image_batches(table, image_root, pre, rows, batch_size, skip_bad_images, progress, desc="predict"):
        dataset = ImageDataset(table, image_root, pre, None, skip_bad_images=skip_bad_images, rows=rows)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images,
                                           num_workers=workers)

    return _image_batches


def study_ordered_rows_vectorised(frame):
    """``feature_store.routing.study_ordered_rows`` (studies in order of first appearance, each in canonical order)
    from one lexsort over the whole table, by ``chexfusion.data.studies.group_studies``."""
    import numpy as np

    from chexfusion.data.studies import group_studies

    groups = group_studies(frame)
    return np.concatenate(list(groups.values())) if groups else np.zeros(0, np.int64)


def timed_predict(predictor, table, image_root, batch_size: int, threads: int, swaps: dict | None = None) -> float:
    """Seconds of one ``predict_table``; ``swaps`` replaces functions of ``chexfusion.inference.stage2`` meanwhile."""
    from chexfusion.inference import TableOptions
    from chexfusion.inference import stage2 as inference

    support.set_threads(threads)
    swaps = swaps or {}
    originals = {name: getattr(inference, name) for name in swaps}
    for name, fn in swaps.items():
        setattr(inference, name, fn)
    try:
        start = time.perf_counter()
        result = predictor.predict_table(table, image_root, TableOptions(batch_size=batch_size, progress=False))
        seconds = time.perf_counter() - start
    finally:
        for name, fn in originals.items():
            setattr(inference, name, fn)
    if len(result.rows) != len(table):
        raise RuntimeError(f"predict returned {len(result.rows)} rows for {len(table)} images")
    return seconds


def timed_backbone(backbone, decoded, threads: int) -> float:
    import torch

    support.set_threads(threads)
    start = time.perf_counter()
    with torch.no_grad():
        for images in decoded:
            backbone(images)
    return time.perf_counter() - start


def counted_flops(fn, modules) -> int:
    """Matmul/conv FLOPs of one call (torch's FlopCounterMode). The modules' parameters are frozen meanwhile: the
    counter's module tracker fails on parameters that require grad under ``no_grad``."""
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for p in params:
            p.requires_grad_(True)
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=192, help="images to predict (first rows of train.csv)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, every side")
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers of the experimental side")
    parser.add_argument("--studies", type=int, default=300, help="size of the synthetic demo dataset")
    args = parser.parse_args(argv)

    import torch

    from chexfusion.data.cxr_lt import read_cxr_lt
    from chexfusion.data.image_dataset import ImageDataset
    from chexfusion.inference import load_predictor

    data = support.demo_data(args.studies, 256)
    stage1 = support.stage1_run(data)
    run = support.stage2_run(data, stage1, support.feature_store(data, stage1))
    predictor = load_predictor(run, "cpu")
    backbones = predictor.routed.backbones
    if len(backbones) != 1:
        raise SystemExit(f"{run} has {len(backbones)} backbones; this benchmark times the shared one")
    backbone = next(iter(backbones.values()))
    with tempfile.TemporaryDirectory(dir=support.OUT) as tmp:
        table = read_cxr_lt(support.subset_csv(data / "train.csv", args.images, Path(tmp) / "images.csv"), classes=[])
    images = ImageDataset(table, data, predictor.preprocess, None)
    stacked = torch.stack([images[i]["image"] for i in range(len(images))])
    decoded = list(torch.split(stacked, args.batch_size))

    def predict(**swaps):
        return lambda: timed_predict(predictor, table, data, args.batch_size, args.threads, swaps)

    fast = {"study_ordered_rows": study_ordered_rows_vectorised}
    sides = {"predict": predict(), "bare": lambda: timed_backbone(backbone, decoded, args.threads),
             "predict_fast_order": predict(**fast)}
    if args.workers:
        sides["predict_fast_order_workers"] = predict(**fast, image_batches=image_batches_with_workers(args.workers))
    times = support.interleaved(sides, args.repeats, warmup=1)
    rates = {name: support.median_rate(args.images, t) for name, t in times.items()}
    ratio = rates["predict"] / rates["bare"]
    # predict also runs the fusion model: the share of its FLOPs that is backbone bounds the ratio from above
    modules = [predictor.model, *backbones.values()]
    predict_flops, bare_flops = counted_flops(sides["predict"], modules), counted_flops(sides["bare"], modules)
    result = {
        "ratio": round(ratio, 3),
        "target": TARGET,
        "meets_target": bool(ratio >= TARGET),
        "predict_images_per_s": round(rates["predict"], 2),
        "bare_images_per_s": round(rates["bare"], 2),
        **{f"ratio_{name[len('predict_'):]}": round(rates[name] / rates["bare"], 3)
           for name in rates if name.startswith("predict_")},
        **{f"{name}_images_per_s": round(rates[name], 2) for name in rates if name.startswith("predict_")},
        "gflop_predict": round(predict_flops / 1e9, 2),
        "gflop_bare": round(bare_flops / 1e9, 2),
        "flop_ratio_bound": round(bare_flops / predict_flops, 3),
        "seconds": {name: [round(s, 3) for s in t] for name, t in times.items()},
        "images": args.images,
        "studies": int(table.frame["study_id"].nunique()),
        "batch_size": args.batch_size,
        "backbone": next(iter(predictor.run.backbones.values())).config.model.backbone,
        "image_size": predictor.preprocess.image_size,
        "source_image_px": 256,
        "threads": args.threads,
        "workers": args.workers,
        "repeats": args.repeats,
        "machine": support.machine_info(),
    }
    print(f"{args.images} images ({result['studies']} studies) of {result['source_image_px']} px JPEG -> "
          f"{result['image_size']} px, {result['backbone']}, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.repeats} interleaved runs")
    print(f"predict (Stage2Predictor.predict_table): {rates['predict']:7.2f} images/s")
    print(f"bare backbone forward, decoded tensors:  {rates['bare']:7.2f} images/s")
    print(f"  with vectorised study order:           {rates['predict_fast_order']:7.2f} images/s "
          f"(ratio {result['ratio_fast_order']:.3f})")
    if args.workers:
        print(f"  ... and {args.workers} loader worker(s):             {rates['predict_fast_order_workers']:7.2f} "
              f"images/s (ratio {result['ratio_fast_order_workers']:.3f})")
    print(f"ratio {ratio:.3f} (target >= {TARGET}); FLOPs: predict {result['gflop_predict']} G, bare "
          f"{result['gflop_bare']} G -> at most {result['flop_ratio_bound']:.3f} with free decoding")
    if ratio < TARGET:
        result["note"] = (f"the demo fusion model's forward is {100 * (1 - bare_flops / predict_flops):.0f}% of "
                          f"predict's FLOPs (bound {result['flop_ratio_bound']:.2f}); the rest is JPEG decoding and "
                          f"the per-study pandas ordering (vectorised: {result['ratio_fast_order']:.2f})")
    support.write_result("predict_throughput", result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
