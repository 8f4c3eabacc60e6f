"""The full CheXFusion recipe at CXR-LT scale: store size, time per epoch, memory and sharding -> docs/scale.md.

Every figure in docs/scale.md is computed here from three kinds of input, all
printed in the document's first table:

- counted: FLOPs and activation memory of the recipe's models at full size
  (stage1/cxr-lt.yaml: convnext_small + ML-Decoder at 1024 px; stage2/cxr-lt.yaml:
  the fusion model on 768 x 32 x 32 maps), by ``support.model_costs`` (the
  backbone on the meta device, the fusion model on CPU tensors);
- measured on this machine: convnext_small's forward (extraction) and
  training step (stage 1) per image at ``--cpu-size`` px, extrapolated to
  1024 px by the counted FLOPs ratio; the fusion model's training step per
  study at full size; the product's study ordering per study; and, when the
  other benchmarks have run (``benchmarks/out/*.json``), JPEG decoding at
  1024 px (image_decode), the feature store's bytes per row beyond the maps
  (the demo store) and the product-over-bare ratios;
- assumed (parameters): the dataset size, the GPU's published ConvNeXt-S
  throughput (default: timm's RTX 3090 AMP benchmark, the ``convnext_small``
  rows of results/benchmark-infer-amp-nchw-pt112-cu113-rtx3090.csv and
  results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv in
  huggingface/pytorch-image-models), scaled to 1024 px by the counted FLOPs
  ratio and checked against the same files' 384-px rows; multi-GPU scaling
  efficiency; disk bandwidth.

Last line of stdout: one JSON object of the headline figures (no target: this
is a plan, not a check).

    python benchmarks/scale_plan.py [--images 377110] [--gpu-infer 1445.85 --gpu-train 489.81 --gpu-size 224] ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path

import support
from support.memory_plan import extraction_bytes, stage1_training_bytes
from support.scale_inputs import (
    DTYPE_BYTES,
    fusion_costs,
    image_model_costs,
    load_configs,
    measure_backbone_cpu,
    measure_fusion_cpu,
    measure_study_ordering,
    read_benchmark,
    store_row_overhead,
    study_size_mix,
)

DOC = support.REPO / "docs" / "scale.md"
POOLS = (None, (16, 16), (8, 8))
GB = 1e9


# ---- the plan ------------------------------------------------------------------------------------------------


def pooled_shape(shape, pool):
    c, h, w = shape
    return (c, *pool) if pool else (c, h, w)


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_time(seconds: float) -> str:
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.3g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def build_plan(args) -> dict:
    s1, s2 = load_configs()
    classes = args.classes
    size = s1.data.image_size
    support.set_threads(args.threads)

    image = image_model_costs(s1, classes, sorted({args.gpu_size, args.gpu_check_size, args.cpu_size, size}))
    shape = tuple(image["feature_shape"])
    mix = study_size_mix()
    fusion_sizes = {pool: fusion_costs(s2, classes, pooled_shape(shape, pool), sorted(mix)) for pool in POOLS}
    cpu = measure_backbone_cpu(s1, classes, args.cpu_size, args.cpu_batch, args.repeats)
    flop_scale = image[size]["backbone_flops"] / image[args.cpu_size]["backbone_flops"]
    fusion_cpu_s = measure_fusion_cpu(s2, classes, shape, 2, args.repeats)
    ordering_s = measure_study_ordering(args.ordering_studies)

    mean_images = sum(n * p for n, p in mix.items())
    fusion_flops = {pool: sum(p * c[n]["flops"] for n, p in mix.items()) for pool, c in fusion_sizes.items()}
    gpu_scale = image[args.gpu_size]["backbone_flops"] / image[size]["backbone_flops"]
    gpu = {"infer": args.gpu_infer * gpu_scale, "train": args.gpu_train * gpu_scale}
    check_scale = image[args.gpu_size]["backbone_flops"] / image[args.gpu_check_size]["backbone_flops"]
    # What the assumed GPU sustains in training FLOP/s on ConvNeXt-S (3x forward), applied to the fusion model.
    gpu_train_flops_per_s = args.gpu_train * 3 * image[args.gpu_size]["backbone_flops"]
    cpu_train_flops_per_s = 3 * fusion_sizes[None][2]["flops"] / fusion_cpu_s

    n_images, n_train = args.images, args.images * args.train_fraction
    train_studies = n_train / args.images_per_study
    overhead = store_row_overhead()
    decode = read_benchmark("image_decode")
    return {
        "args": vars(args), "s1": s1, "s2": s2, "image": image, "shape": shape, "mix": mix,
        "mean_images_per_study_table": mean_images, "fusion_sizes": fusion_sizes, "fusion_flops": fusion_flops,
        "cpu": cpu, "flop_scale_cpu": flop_scale, "fusion_cpu_s": fusion_cpu_s, "ordering_s": ordering_s,
        "gpu": gpu, "gpu_scale": gpu_scale, "check_scale": check_scale, "gpu_train_flops_per_s": gpu_train_flops_per_s,
        "cpu_train_flops_per_s": cpu_train_flops_per_s, "n_images": n_images, "n_train": n_train,
        "train_studies": train_studies, "row_overhead": overhead or 0.0, "row_overhead_measured": overhead is not None,
        "decode": decode, "benchmarks": {name: read_benchmark(name) for name in
                                         ("stage1_throughput", "stage2_cache", "predict_throughput",
                                          "stage2_scaleout")},
        "store_bench": read_benchmark("feature_store"),
    }


def gpu_time(items: float, per_gpu_rate: float, gpus: int, efficiency: float) -> float:
    return items / (per_gpu_rate * gpus * (efficiency if gpus > 1 else 1.0))


def render(plan: dict) -> tuple[str, dict]:
    a, s1, s2 = plan["args"], plan["s1"], plan["s2"]
    size, shape, image = s1.data.image_size, plan["shape"], plan["image"]
    gpus, eff = a["gpus"], a["scaling_efficiency"]
    n_images, n_train, train_studies = plan["n_images"], plan["n_train"], plan["train_studies"]
    headline: dict = {}
    lines: list[str] = []
    out = lines.append

    out("# Scale plan: the full CheXFusion recipe at CXR-LT scale")
    out("")
    out(f"Generated by `benchmarks/scale_plan.py` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; every "
        "figure below is computed by that script (do not edit this file: change its parameters and run it again, "
        "or `make bench`). Recipe: `stage1/cxr-lt.yaml` and `stage2/cxr-lt.yaml`.")
    out("")
    machine = support.machine_info()
    out(f"Measured on: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM, torch "
        f"{machine['torch']}, timm {machine['timm']}, {a['threads']} torch thread(s), load average "
        f"{machine['load_average_1min']} (a shared machine: CPU figures are per thread and approximate).")
    out("")

    # ---- inputs
    out("## Inputs")
    out("")
    out("| input | value | source |")
    out("|---|---|---|")
    out(f"| images | {n_images:,} | parameter `--images` (CXR-LT) |")
    out(f"| images per study | {a['images_per_study']} | parameter `--images-per-study`; the shipped CXR-LT 2024 "
        f"study-size table gives {plan['mean_images_per_study_table']:.3f} (used for the fusion cost mix) |")
    out(f"| training share of images | {a['train_fraction']:.0%} ({n_train:,.0f} images, {train_studies:,.0f} "
        f"studies) | parameter `--train-fraction` (CXR-LT split 70/10/20) |")
    out(f"| backbone, image size | {s1.model.backbone}, {size} px -> map {shape[0]} x {shape[1]} x {shape[2]} | "
        "stage1/cxr-lt.yaml; map shape counted |")
    out(f"| stage-1 model parameters | {image['params'] / 1e6:.1f} M | counted |")
    out(f"| backbone forward per image | {image[size]['backbone_flops'] / 1e9:.0f} GFLOP at {size} px, "
        f"{image[a['gpu_size']]['backbone_flops'] / 1e9:.1f} at {a['gpu_size']} px | counted (meta device) |")
    out(f"| fusion model parameters | {plan['fusion_sizes'][None]['params'] / 1e6:.1f} M | counted "
        f"(stage2/cxr-lt.yaml: dim {s2.model.dim}, {s2.model.layers} layers) |")
    out(f"| fusion forward per study | {plan['fusion_flops'][None] / 1e9:.1f} GFLOP (unpooled maps; 1 image "
        f"{plan['fusion_sizes'][None][1]['flops'] / 1e9:.1f}, "
        f"2 images {plan['fusion_sizes'][None][2]['flops'] / 1e9:.1f}) "
        "| counted, averaged over the study-size table |")
    out(f"| GPU throughput (assumed) | {a['gpu_name']}: ConvNeXt-S {a['gpu_infer']} images/s inference, "
        f"{a['gpu_train']} images/s training at {a['gpu_size']} px | parameters `--gpu-*` |")
    check = a["gpu_infer"] * plan["check_scale"]
    out(f"| ... at {size} px | {plan['gpu']['infer']:.1f} images/s inference, {plan['gpu']['train']:.1f} training | "
        f"scaled by the counted FLOPs ratio; check: the same scaling predicts {check:.0f} images/s at "
        f"{a['gpu_check_size']} px, the published figure is {a['gpu_check_infer']} |")
    out(f"| GPU training FLOP/s for the fusion model | {plan['gpu_train_flops_per_s'] / 1e12:.1f} TFLOP/s | the "
        "assumed GPU's ConvNeXt-S training rate x 3 x forward FLOPs |")
    out(f"| multi-GPU scaling efficiency | {eff:.0%} | parameter `--scaling-efficiency` |")
    out(f"| disk read / write | {a['read_gb_s']} / {a['write_gb_s']} GB/s | parameters |")
    cpu = plan["cpu"]
    out(f"| CPU: backbone forward per image | {cpu['forward'] * 1e3:.0f} ms at {a['cpu_size']} px -> "
        f"{cpu['forward'] * plan['flop_scale_cpu']:.1f} s at {size} px | measured here, x{plan['flop_scale_cpu']:.1f} "
        "by FLOPs |")
    out(f"| CPU: stage-1 training step per image | {cpu['train'] * 1e3:.0f} ms at {a['cpu_size']} px -> "
        f"{cpu['train'] * plan['flop_scale_cpu']:.1f} s at {size} px | measured here (batch {a['cpu_batch']}), "
        "by FLOPs |")
    out(f"| CPU: fusion training step, 2-image study | {plan['fusion_cpu_s']:.2f} s "
        f"({plan['cpu_train_flops_per_s'] / 1e9:.0f} GFLOP/s) | measured here at full size |")
    decode = plan["decode"]
    if decode:
        out(f"| JPEG decode to {decode['target_px']} px | {decode['draft_images_per_s']:.1f} images/s per core "
            f"({decode['source_px'][0]} x {decode['source_px'][1]} px source) | benchmarks/image_decode.py |")
    else:
        out("| JPEG decode | not measured | run benchmarks/image_decode.py first |")
    out(f"| store bytes per row beyond the map | {plan['row_overhead']:.0f} B | "
        + ("measured on the demo store |" if plan["row_overhead_measured"] else "no demo store yet: 0 assumed |"))
    out("")

    # ---- store size
    out("## Feature store size")
    out("")
    out(f"One row per image: the {s1.model.backbone} map at {size} px, optionally average-pooled (`features.pool`), "
        "stored uncompressed (float16 maps do not compress: see chexfusion/feature_store/schema.py).")
    out("")
    out("| pool | map | dtype | per image | all images | training split |")
    out("|---|---|---|---|---|---|")
    store_bytes = {}
    for pool in POOLS:
        c, h, w = pooled_shape(shape, pool)
        for dtype, itemsize in DTYPE_BYTES.items():
            row = c * h * w * itemsize + plan["row_overhead"]
            store_bytes[(pool, dtype)] = row
            out(f"| {'none' if pool is None else f'{pool[0]}x{pool[1]}'} | {c} x {h} x {w} | {dtype} | "
                f"{fmt_bytes(row)} | {fmt_bytes(row * n_images)} | {fmt_bytes(row * n_train)} |")
    headline["store_gb_float16_unpooled"] = round(store_bytes[(None, "float16")] * n_images / GB, 1)
    out("")

    # ---- time
    out("## Time")
    out("")
    out(f"GPU columns assume the throughput above; 8 GPUs at {eff:.0%} scaling efficiency. The CPU column is this "
        "machine, one thread, extrapolated by FLOPs (to show the order of magnitude, not to be run).")
    out("")
    out(f"| step | work | CPU (1 thread) | 1 GPU | {gpus} GPUs |")
    out("|---|---|---|---|---|")
    dtype = s2.features.dtype
    row16 = store_bytes[(None, dtype)]
    extract_compute = {g: gpu_time(n_images, plan["gpu"]["infer"], g, eff) for g in (1, gpus)}
    write_s = row16 * n_images / (a["write_gb_s"] * GB)
    stage1 = {g: gpu_time(n_train, plan["gpu"]["train"], g, eff) for g in (1, gpus)}
    cpu_stage1 = n_train * cpu["train"] * plan["flop_scale_cpu"]
    cpu_extract = n_images * cpu["forward"] * plan["flop_scale_cpu"]
    out(f"| stage 1, one epoch | {n_train:,.0f} images at {size} px, forward + backward | {fmt_time(cpu_stage1)} | "
        f"{fmt_time(stage1[1])} | {fmt_time(stage1[gpus])} |")
    out(f"| feature extraction, once | {n_images:,} images, forward; writes {fmt_bytes(row16 * n_images)} "
        f"({dtype}, unpooled) | {fmt_time(cpu_extract)} | {fmt_time(extract_compute[1])} + "
        f"{fmt_time(write_s)} writing | {fmt_time(extract_compute[gpus])} + writing (shared by the ranks) |")
    headline.update(stage1_epoch_hours_1gpu=round(stage1[1] / 3600, 2),
                    stage1_epoch_hours_8gpu=round(stage1[gpus] / 3600, 2),
                    extraction_hours_1gpu=round(extract_compute[1] / 3600, 2))
    for pool in POOLS:
        flops = 3 * plan["fusion_flops"][pool] * train_studies
        compute = {g: flops / (plan["gpu_train_flops_per_s"] * g * (eff if g > 1 else 1.0)) for g in (1, gpus)}
        read_s = store_bytes[(pool, dtype)] * n_train / (a["read_gb_s"] * GB)
        name = "none" if pool is None else f"{pool[0]}x{pool[1]}"
        out(f"| stage 2, one epoch (pool {name}) | {train_studies:,.0f} studies, fusion forward + backward; reads "
            f"{fmt_bytes(store_bytes[(pool, dtype)] * n_train)} | {fmt_time(flops / plan['cpu_train_flops_per_s'])} | "
            f"{fmt_time(compute[1])} compute, {fmt_time(read_s)} reading from disk | {fmt_time(compute[gpus])} "
            f"compute, reading shared |")
        if pool is None:
            headline["stage2_epoch_minutes_1gpu_compute"] = round(compute[1] / 60, 1)
    recompute = (n_train / (plan["gpu"]["infer"])
                 + 3 * plan["fusion_flops"][None] * train_studies / plan["gpu_train_flops_per_s"])
    cached = 3 * plan["fusion_flops"][None] * train_studies / plan["gpu_train_flops_per_s"]
    out(f"| stage 2, one epoch recomputing the backbone (the public implementation) | decode + backbone forward of "
        f"every image every epoch, then the fusion step | - | {fmt_time(recompute)} | "
        f"{fmt_time(recompute / (gpus * eff))} |")
    out("")
    per_study_backbone = image[size]["backbone_flops"] * a["images_per_study"]
    flop_ratio = (per_study_backbone + 3 * plan["fusion_flops"][None]) / (3 * plan["fusion_flops"][None])
    headline["stage2_cache_ratio_full_recipe"] = round(recompute / cached, 1)
    out(f"The cache's gain at full scale: a stage-2 epoch recomputing the backbone costs "
        f"{recompute / cached:.1f}x one from the store on the assumed GPU ({flop_ratio:.1f}x by FLOPs: "
        f"{per_study_backbone / 1e9:.0f} GFLOP of backbone forward per study against "
        f"{3 * plan['fusion_flops'][None] / 1e9:.0f} GFLOP of fusion training), before counting the JPEG decoding it "
        "also repeats.")
    out("")
    if decode:
        for label, rate, key, workers in (
                ("stage 1", plan["gpu"]["train"], "train.num_workers", s1.train.num_workers),
                ("feature extraction", plan["gpu"]["infer"], "features.num_workers", s2.features.num_workers)):
            out(f"Data loading for {label}: one GPU takes {rate:.0f} images/s, which needs at least "
                f"{math.ceil(rate / decode['draft_images_per_s'])} data-loader worker(s) (CPU cores) decoding at the "
                f"measured {decode['draft_images_per_s']:.1f} images/s each (`{key}` is {workers} in the recipe).")
            out("")
    bench = plan["benchmarks"]
    ratios = {k: v["ratio"] for k, v in bench.items() if v and "ratio" in v}  # stage2_scaleout has none
    if ratios:
        out("Product overheads measured at demo scale (benchmarks/RESULTS.md), not applied above: "
            + "; ".join(f"{k} ratio {v}" for k, v in ratios.items()) + ".")
        out("")

    # ---- memory
    out("## Memory")
    out("")
    b1, b_extract, b2 = s1.train.batch_size, s2.features.batch_size, s2.train.batch_size
    p1, pf = image["trainable_params"], plan["fusion_sizes"][None]["params"]
    out("Optimizer state: fp32 weights, gradients and two AdamW moments, 16 bytes per trainable parameter (kept in "
        "fp32 under fp16 autocast). Activations: the tensors autograd keeps for backward, counted in fp32 (fp16 "
        "autocast stores most of them in half, roughly halving the figure).")
    out("")
    out("| step | per process | what |")
    out("|---|---|---|")
    saved1 = image[size]["train_saved_bytes"]
    out(f"| stage 1 training, batch {b1} at {size} px | {fmt_bytes(stage1_training_bytes(p1, saved1, b1, False))} "
        f"fp32, about {fmt_bytes(stage1_training_bytes(p1, saved1, b1, True))} with fp16 autocast | "
        f"{fmt_bytes(16 * p1)} optimizer state + {fmt_bytes(saved1)} activations per image |")
    peak = image[size]["backbone_peak_module_bytes"] * b_extract
    extract = extraction_bytes(image["params"], image[size]["backbone_peak_module_bytes"], b_extract)
    out(f"| feature extraction, batch {b_extract} | at least {fmt_bytes(extract)} | fp32 weights "
        f"{fmt_bytes(4 * image['params'])} + the largest layer's input and output for the batch "
        f"({fmt_bytes(peak)}); no gradients |")
    for n in (2, 4, max(plan["mix"])):
        saved = plan["fusion_sizes"][None][n]["saved_bytes"] * b2
        maps = b2 * n * store_bytes[(None, dtype)]
        out(f"| stage 2 training, batch {b2} studies padded to {n} images | {fmt_bytes(16 * pf + saved + maps)} | "
            f"{fmt_bytes(16 * pf)} optimizer state + {fmt_bytes(saved)} activations + {fmt_bytes(maps)} input maps |")
    split_bytes = store_bytes[(None, dtype)] * n_train
    group = s2.features.row_group_rows * store_bytes[(None, dtype)]
    buffer = a["shuffle_buffer"] * a["images_per_study"] * store_bytes[(None, dtype)]
    lanes = s2.features.stream_lanes
    out(f"| stage 2 data, split in memory (when it fits `features.max_memory_gb`) | {fmt_bytes(split_bytes)} per "
        f"machine, shared by its processes (unpooled {dtype}); {fmt_bytes(store_bytes[((8, 8), dtype)] * n_train)} "
        f"pooled 8x8 | `FeatureStore.map_split`: the training split memory-mapped from one Arrow IPC copy in the "
        f"page cache |")
    out(f"| stage 2 data, training split streamed | {fmt_bytes(lanes * (group + buffer))} | {lanes} lanes "
        f"(`features.stream_lanes`), each one row group of {s2.features.row_group_rows} rows ({fmt_bytes(group)}) + "
        f"a shuffle buffer of {a['shuffle_buffer']} studies (`stage2.studies.ShardedSource`) |")
    headline["stage2_split_in_memory_gb"] = round(split_bytes / GB, 1)
    out("")

    # ---- sharding
    shard_rows = s2.features.shard_rows
    shards = math.ceil(n_images / shard_rows)
    groups = math.ceil(n_train / s2.features.row_group_rows)
    out("## How each step shards across machines")
    out("")
    out(f"Every step runs under `accelerate launch` (`--num_machines M --machine_rank r --main_process_ip HOST "
        f"--num_processes` = all GPUs); `train.batch_size` is per process, so {gpus} GPUs at the recipe's batch "
        f"{b1} train on a global batch of {b1 * gpus}.")
    out("")
    out(f"- **Stage 1**: every rank draws the same permutation of the training images from (seed, epoch) and takes "
        f"every {gpus}-th batch of it; gradients are averaged (DDP); each rank reads only its images "
        f"({n_train / gpus:,.0f} per epoch on {gpus} GPUs). Augmentations draw from (seed, epoch, row), so results "
        "do not depend on the number of ranks (tests/test_multiprocess.py).")
    out(f"- **Feature extraction**: the store order (studies by first appearance, images in canonical view order) is "
        f"cut into shards of {shard_rows} rows ({shards:,} shards, {fmt_bytes(shard_rows * row16)} each unpooled "
        f"{dtype}); rank r writes the shards j with j mod world = r ({math.ceil(shards / gpus)} per GPU on {gpus} "
        "GPUs), into one folder on a file system every machine sees; the main process writes `manifest.json` after "
        "all ranks finish. The bytes do not depend on the number of ranks (tests/test_multiprocess.py), and a "
        "killed run resumes shard by shard.")
    out(f"- **Stage 2**: reads the store by shards and row groups ({s2.features.row_group_rows} rows, "
        f"{fmt_bytes(group)} unpooled, whole studies): in memory when the split fits `features.max_memory_gb` "
        "(one mapped copy per machine), streamed otherwise. The streamed training split is cut into shares: each "
        "epoch the row groups are permuted from (seed, epoch) and each (process, lane) reads one contiguous run of "
        f"them, so an epoch reads the store about {1 + (gpus * lanes - 1) / groups:.3f} times over all {gpus} "
        f"processes ({fmt_bytes(split_bytes * (1 + (gpus * lanes - 1) / groups))} for {groups:,} row groups; "
        "benchmarks/stage2_scaleout.py measures it), and the data order depends on the seed and the number of "
        "processes, not on the DataLoader workers.")
    scaleout = plan["benchmarks"].get("stage2_scaleout")
    if scaleout:
        out(f"  Measured (`python benchmarks/stage2_scaleout.py` on a {scaleout['machine']['cores']}-core CPU, "
            f"{dt.date.fromtimestamp(support.OUT.joinpath('stage2_scaleout.json').stat().st_mtime)}, a "
            f"{scaleout['store_gb']} GB store of 768 x 8 x 8 maps): one "
            f"streamed epoch on 2 processes x 2 workers read {scaleout['read_amplification']} x the store "
            f"({scaleout['read_amplification_1x1']} x on 1 x 1) and trained on every study once; 2 processes "
            f"holding the split in memory take {scaleout['node_memory_ratio']} x the memory of one (summed Pss).")
    store_bench = plan["store_bench"]
    if store_bench and "verified_read_ratio_stream" in store_bench:
        machine = store_bench["machine"]
        out(f"  Store integrity, measured (`python benchmarks/feature_store.py` on a {machine['cores']}-core CPU "
            f"shared with other jobs, 1-minute load average {machine['load_average_1min']} at the end, "
            f"{dt.date.fromtimestamp(support.OUT.joinpath('feature_store.json').stat().st_mtime)}, "
            f"{store_bench['rows']} rows of 768 x 8 x 8 maps, medians of {store_bench['repeats']} fresh processes): "
            f"each row group's checksums are hashed from its Arrow buffers as it is written, costing the writer "
            f"{store_bench['checksum_write_overhead']:+.0%} over Parquet alone (target <= +20%; hashing the bytes "
            f"pyarrow writes instead would need them in Python, and pyarrow hands a Python file object a copy of "
            f"each write), and checked as it "
            f"is read: verified over unverified read {store_bench['verified_read_ratio_memory']:.2f} in memory "
            f"(`map_split` writing the mapped copy) and {store_bench['verified_read_ratio_stream']:.2f} streamed "
            f"(target >= 0.9); `load_split` verified runs at {store_bench['read_ratio']:.2f} of np.load's speed "
            f"(target >= 0.8) and {store_bench['verified_read_ratio_load_split']:.2f} of its unverified speed, which "
            f"leaves the maps unread until they are used.")
    out(f"- **Ordering rows by study** (`feature_store.routing.study_ordered_rows`, used by extraction and predict) "
        f"costs "
        f"{plan['ordering_s'] * 1e3:.2f} ms per study here, "
        f"{fmt_time(plan['ordering_s'] * n_images / a['images_per_study'])} "
        f"for all {n_images / a['images_per_study']:,.0f} studies, in every process.")
    out("")

    # ---- findings
    out("## What does not scale yet")
    out("")
    out(f"- Stage 2 streams the validation and test splits whole in every process (each keeps its slice of the "
        f"batches, for the gathered metrics): {fmt_bytes(store_bytes[(None, dtype)] * (n_images - n_train))} of "
        f"the store read {gpus} times per evaluation.")
    out("- Feature extraction and predict run the backbone in fp32 (no autocast); the GPU figures above assume AMP "
        "like the published throughput.")
    out("- `study_ordered_rows` runs one pandas call per study (figure above); one vectorised sort "
        "(`data.studies.group_studies`) gives the same order in milliseconds.")
    out("")
    return "\n".join(lines) + "\n", headline


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=377_110)
    parser.add_argument("--images-per-study", type=float, default=1.65)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--classes", type=int, default=40, help="CXR-LT 2024 task 1")
    parser.add_argument("--gpu-name", default="RTX 3090, AMP (timm benchmark CSVs, PyTorch 1.12)")
    parser.add_argument("--gpu-infer", type=float, default=1445.85, help="ConvNeXt-S inference images/s at --gpu-size")
    parser.add_argument("--gpu-train", type=float, default=489.81, help="ConvNeXt-S training images/s at --gpu-size")
    parser.add_argument("--gpu-size", type=int, default=224)
    parser.add_argument("--gpu-check-size", type=int, default=384, help="a second published size, to check scaling")
    parser.add_argument("--gpu-check-infer", type=float, default=494.64, help="published inference images/s there")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--scaling-efficiency", type=float, default=0.9)
    parser.add_argument("--read-gb-s", type=float, default=2.0)
    parser.add_argument("--write-gb-s", type=float, default=1.0)
    parser.add_argument("--shuffle-buffer", type=int, default=64, help="studies buffered when stage 2 streams")
    parser.add_argument("--cpu-size", type=int, default=256, help="image size of the CPU measurement")
    parser.add_argument("--cpu-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ordering-studies", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)

    plan = build_plan(args)
    text, headline = render(plan)
    from chexfusion.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)
    result = {**headline, "doc": str(args.out.relative_to(support.REPO) if args.out.is_relative_to(support.REPO)
                                      else args.out), "target": None, "meets_target": None}
    support.write_result("scale_plan", result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
