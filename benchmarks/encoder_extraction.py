"""Feature extraction through a frozen foundation encoder (``hf:``) against a bare forward of the same model,
and the store's bytes per image at each pooling of a RAD-DINO-sized map.

A frozen encoder as the store's backbone runs every image of a data set once;
what chexfusion adds around the model (the patch tokens laid on their grid,
routing, rounding to the store dtype, the copy back to the CPU) must cost
little next to the forward pass itself.

- extract: ``FeatureExtractor.maps`` (what ``chexfusion features`` runs on
  each batch after decoding) with ``features.shared_backbone`` an ``hf:``
  folder, float16, no pooling;
- bare: ``Dinov2Model(pixel_values=...).last_hidden_state`` of the same folder,
  under ``torch.inference_mode``;
- both on the same pre-decoded ``[--images, 3, S, S]`` tensors in batches of
  ``--batch-size``, at ``--threads`` torch threads, alternating after one
  untimed round; medians over ``--repeats``.

The model is a DINOv2 ViT-S/14 (384 wide, 12 blocks) built from its config with
random weights at ``--image-size`` px (224: a 16 x 16 grid): RAD-DINO itself
(ViT-B/14 at 518 px) is not on this machine and is too slow for a CPU run;
the wrapper's cost does not depend on the weights.

Bytes per image: one shard of ``--rows`` random float16 maps of RAD-DINO's
shape (768 x 37 x 37) at each ``features.pool``, written by the store's own
shard writer (binary layout); file bytes / rows. Random values do not compress,
so this is what the store costs at most.

Last line of stdout: one JSON object with ``ratio`` (extract images/s over bare
images/s) and ``bytes_per_image``. Target: ratio >= 0.9.

    python benchmarks/encoder_extraction.py [--images 32] [--batch-size 16] [--image-size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import support

TARGET = 0.9
RAD_DINO_SHAPE = (768, 37, 37)
POOLS = (None, (16, 16), (8, 8), (4, 4), (1, 1))


def save_vit_small(folder: Path, image_size: int) -> Path:
    import transformers

    config = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                       patch_size=14, image_size=image_size)
    transformers.Dinov2Model(config).save_pretrained(folder)
    transformers.BitImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def timed(fn, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return time.perf_counter() - start


def throughput(folder: Path, args) -> dict:
    import torch
    import transformers

    from chexfusion.feature_store.extract import FeatureExtractor
    from chexfusion.feature_store.sources import backbone_entry

    entry = backbone_entry("shared", f"hf:{folder}", "shared")
    expected = {"routing": "shared", "unknown_view": None, "pool": None, "dtype": "float16",
                "shape": entry["feature_shape"], "backbones": {"shared": entry}}
    extractor = FeatureExtractor(expected, "cpu")
    bare = transformers.Dinov2Model.from_pretrained(folder).eval()
    images = torch.randn(args.images, 3, args.image_size, args.image_size)
    batches = list(images.split(args.batch_size))
    views = ["frontal"] * args.batch_size

    def extract() -> float:
        return timed(lambda b: extractor.maps(b, views[: len(b)]), batches)

    def forward() -> float:
        with torch.inference_mode():
            return timed(lambda b: bare(pixel_values=b).last_hidden_state, batches)

    times = support.timing.interleaved({"extract": extract, "bare": forward}, args.repeats, warmup=1)
    rates = {name: support.timing.median_rate(args.images, seconds) for name, seconds in times.items()}
    return {"extract_images_per_s": rates["extract"], "bare_images_per_s": rates["bare"],
            "ratio": rates["extract"] / rates["bare"], "map_shape": entry["feature_shape"]}


def bytes_per_image(rows: int, workdir: Path) -> dict:
    import numpy as np

    from chexfusion.feature_store.manifest import pooled_shape
    from chexfusion.feature_store.schema import META_COLUMNS, shard_table, write_parquet

    rng = np.random.default_rng(0)
    columns = {name: np.array([f"{name}-{i}" for i in range(rows)], dtype=object) for name in META_COLUMNS}
    columns["csv_row"] = np.arange(rows, dtype=np.int32)
    columns["view"] = np.array(["frontal"] * rows, dtype=object)
    out = {}
    for pool in POOLS:
        shape = tuple(pooled_shape(RAD_DINO_SHAPE, pool))
        features = rng.standard_normal((rows, int(np.prod(shape))), dtype=np.float32).astype(np.float16)
        path = workdir / f"pool-{pool}.parquet"
        write_parquet(shard_table(columns, features.view(np.uint16).view(np.float16), "float16", "binary", shape),
                      path, rows)
        out["x".join(map(str, shape))] = path.stat().st_size / rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=32)
    args = parser.parse_args()
    support.timing.set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = throughput(save_vit_small(Path(tmp) / "vit-s14", args.image_size), args)
        result["bytes_per_image"] = bytes_per_image(args.rows, Path(tmp))
    result.update(images=args.images, batch_size=args.batch_size, image_size=args.image_size,
                  threads=args.threads, target=TARGET, meets_target=result["ratio"] >= TARGET,
                  machine=support.machine.machine_info())
    if not result["meets_target"]:
        result["note"] = "the wrapper costs more than 10% of the forward pass: see extract vs bare"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
