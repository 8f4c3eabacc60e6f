"""GPU readiness: the full recipe, reduced in steps only, on one CUDA device, against bare loops of the same model.

On a CUDA machine (``make gpu-check``) this writes a synthetic set at 1024 px
(``chexfusion synth --image-size 1024``), then runs the full-recipe configs
(stage1/cxr-lt.yaml, stage2/cxr-lt.yaml; pretrained weights off, one epoch of
``--steps`` steps) through the product -- stage 1, feature extraction,
stage 2, predict -- and reports:

- stage-1 images/s against a bare loop (the same model, batch, precision and
  memory format, AdamW, synthetic batches already on the device): target >= 0.9;
- extraction images/s against a bare forward of the same backbone and batch: >= 0.9;
- peak GPU memory (``torch.cuda.max_memory_allocated``) of stage 1 and of the
  extraction against the figures docs/scale.md plans (``support.memory_plan``);
- the data-loader stall share: the part of stage 1's training time the main
  process waited for the next batch (``train.num_workers`` as configured);
- the stage-2 predictions of the same weights on the GPU and on the CPU: the
  largest difference, within fp16 tolerance.

Both sides of each ratio are timed cold, from their first step: the product's
epoch (history.jsonl ``train_seconds``) includes starting its DataLoader workers
and the first steps' kernel selection, and so does the bare loop's first step.
Last line of stdout: one JSON object. Without CUDA it prints one line saying so
and exits 0: nothing is measured. ``--device cpu`` runs the same steps on the CPU
(the test suite does, with the demo configs and tiny data), for the wiring only.

    python benchmarks/gpu_check.py [--studies 300] [--steps 30] [-o key=value ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import support
import torch
from support.memory_plan import extraction_bytes, stage1_training_bytes
from support.scale_inputs import image_model_costs

TARGET = 0.9  # product over bare, stage 1 and extraction
PREDICTION_TOLERANCE = 1e-2  # largest |GPU - CPU| probability: what fp16 / TF32 rounding moves a sigmoid by
STAGE1_CONFIG = support.REPO / "stage1" / "cxr-lt.yaml"
STAGE2_CONFIG = support.REPO / "stage2" / "cxr-lt.yaml"
GB = 1e9


def no_cuda_line(device: str) -> str | None:
    """The one line printed instead of measuring, or None when ``device`` can be used."""
    if device == "cuda" and not torch.cuda.is_available():
        return f"gpu_check: no CUDA device on this machine (torch {torch.__version__}): nothing measured"
    return None


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    """Free what an earlier step left unreferenced (its model, optimizer), then start counting the peak afresh."""
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if device == "cuda" else None


def autocast_dtype(mixed_precision: str, device: str):
    """The autocast dtype accelerate uses for ``train.mixed_precision`` (``auto``: fp16 on CUDA), or None."""
    precision = mixed_precision if mixed_precision != "auto" else ("fp16" if device == "cuda" else "no")
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


# ---- bare loops ---------------------------------------------------------------------------------------------------


def _bare_model(cfg, num_classes: int, device: str, fast_paths: bool):
    """The stage-1 model on ``device``; with ``fast_paths``, in channels_last and compiled as ``train.*`` asks
    (training does; extraction runs the backbone as it is)."""
    from chexfusion.stage1.model import build_image_model

    model = build_image_model(cfg, num_classes, pretrained=False).to(device)
    if fast_paths and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fast_paths and cfg.train.compile:
        model.compile()
    return model


def _bare_images(cfg, batch: int, device: str, channels_last: bool) -> torch.Tensor:
    size = cfg.data.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def bare_train_rate(cfg, num_classes: int, device: str, steps: int) -> float:
    """Images/s of a plain training loop of the stage-1 model: synthetic batches on the device, AdamW, BCE, the
    config's batch, autocast precision (with a GradScaler for fp16, as accelerate does), memory format and
    compilation."""
    model = _bare_model(cfg, num_classes, device, fast_paths=True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    dtype = autocast_dtype(cfg.train.mixed_precision, device)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    images = _bare_images(cfg, cfg.train.batch_size, device, cfg.train.channels_last)
    targets = torch.randint(0, 2, (cfg.train.batch_size, num_classes), device=device).float()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).float(), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the product's loop reads the loss every step too
    synchronize(device)
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


@torch.no_grad()
def bare_forward_rate(cfg, num_classes: int, device: str, batch: int, batches: int) -> float:
    """Images/s of the stage-1 backbone's forward alone (fp32, as extraction runs it), maps copied to the host."""
    backbone = _bare_model(cfg, num_classes, device, fast_paths=False).backbone.eval()
    images = _bare_images(cfg, batch, device, channels_last=False)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(batches):
        backbone(images).cpu()
    return batches * batch / (time.perf_counter() - start)


# ---- the product ----------------------------------------------------------------------------------------------------


class LoaderWaits:
    """Seconds the main process spent in ``next()`` of DataLoaders whose dataset is a ``dataset_type`` (the
    training set), by patching the DataLoader iterator while the ``with`` block runs."""

    def __init__(self, dataset_type: type):
        self.dataset_type, self.seconds, self.batches = dataset_type, 0.0, 0

    def __enter__(self):
        from torch.utils.data import dataloader

        self._iterator, self._next = dataloader._BaseDataLoaderIter, dataloader._BaseDataLoaderIter.__next__
        waits = self

        def timed_next(iterator):
            start = time.perf_counter()
            try:
                return waits._next(iterator)
            finally:
                if isinstance(iterator._dataset, waits.dataset_type):
                    waits.seconds += time.perf_counter() - start
                    waits.batches += 1

        self._iterator.__next__ = timed_next
        return self

    def __exit__(self, *exc):
        self._iterator.__next__ = self._next


@contextmanager
def timed(device: str, into: dict, key: str):
    """Wall seconds and peak device memory of the block, into ``into[key + '_seconds' / '_peak_bytes']``."""
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    yield
    synchronize(device)
    into[f"{key}_seconds"] = time.perf_counter() - start
    into[f"{key}_peak_bytes"] = peak_bytes(device)


def product_stage1(cfg, device: str, steps: int) -> dict:
    """Train the stage-1 config (one epoch of ``steps`` steps) in this process; its training images/s, stall share
    and peak memory."""
    from chexfusion.data.augment import AugmentedDataset
    from chexfusion.stage1.command import train

    out: dict = {}
    with LoaderWaits(AugmentedDataset) as waits, timed(device, out, "stage1"):
        train(cfg)
    history = [json.loads(line) for line in (Path(cfg.output_dir) / cfg.name / "history.jsonl").open()]
    seconds = history[0]["train_seconds"]
    images = steps * cfg.train.batch_size
    return {"images_per_s": images / seconds, "train_seconds": seconds, "images": images,
            "stall_share": min(1.0, waits.seconds / seconds), "peak_bytes": out["stage1_peak_bytes"]}


def product_extraction(cfg, device: str) -> dict:
    """Write the feature store of the stage-2 config; its images/s (all splits) and peak memory."""
    from chexfusion.feature_store.command import write_features

    out: dict = {}
    with timed(device, out, "extract"):
        store = write_features(cfg)
    images = sum(store.split_rows(name) for name in store.splits)
    return {"images_per_s": images / out["extract_seconds"], "images": images,
            "peak_bytes": out["extract_peak_bytes"]}


def prediction_difference(run: Path, csv: Path, image_root: Path, device: str, studies: int) -> float:
    """Largest |p_device - p_cpu| over the first ``studies`` studies of ``csv``, the same run folder."""
    from chexfusion.data.cxr_lt import read_cxr_lt
    from chexfusion.inference import TableOptions, load_predictor

    table = read_cxr_lt(csv)
    first = table.frame["study_id"].drop_duplicates().iloc[:studies]
    table = table.select(table.frame.index[table.frame["study_id"].isin(first)])
    options = TableOptions(progress=False)
    results = [load_predictor(run, d, calibrated=False).predict_table(table, image_root, options)
               for d in (device, "cpu")]
    if not (results[0].rows == results[1].rows).all():
        raise RuntimeError(f"{run}: the {device} and cpu predictions cover different rows")
    return float(abs(results[0].probs - results[1].probs).max())


# ---- the plan and the report ----------------------------------------------------------------------------------------


def planned_memory(s1, s2, num_classes: int) -> dict:
    """docs/scale.md's per-process figures for these configs (counted on the meta device, no weights)."""
    size = s1.data.image_size
    costs = image_model_costs(s1, num_classes, [size])
    amp = autocast_dtype(s1.train.mixed_precision, "cuda") is not None
    return {"stage1_bytes": stage1_training_bytes(costs["trainable_params"], costs[size]["train_saved_bytes"],
                                                  s1.train.batch_size, amp),
            "extraction_bytes": extraction_bytes(costs["params"], costs[size]["backbone_peak_module_bytes"],
                                                 s2.features.batch_size)}


def _ratio(product: float, bare: float) -> float:
    return round(product / bare, 3) if bare > 0 else float("nan")


def _gb(n: float | None) -> float | None:
    return None if n is None else round(n / GB, 2)


def report(device_name: str, stage1: dict, bare_train: float, extraction: dict, bare_forward: float, planned: dict,
           difference: float, s1) -> dict:
    """The check's JSON: each figure with its target and whether it is met (memory: measured over planned)."""
    train_ratio, extract_ratio = _ratio(stage1["images_per_s"], bare_train), _ratio(extraction["images_per_s"],
                                                                                     bare_forward)
    result = {
        "device": device_name, "backbone": s1.model.backbone, "image_size": s1.data.image_size,
        "batch_size": s1.train.batch_size, "mixed_precision": s1.train.mixed_precision,
        "channels_last": s1.train.channels_last, "compile": s1.train.compile, "num_workers": s1.train.num_workers,
        "stage1_images_per_s": round(stage1["images_per_s"], 2), "stage1_bare_images_per_s": round(bare_train, 2),
        "stage1_ratio": train_ratio,
        "extraction_images_per_s": round(extraction["images_per_s"], 2),
        "extraction_bare_images_per_s": round(bare_forward, 2), "extraction_ratio": extract_ratio,
        "stage1_peak_memory_gb": _gb(stage1["peak_bytes"]), "stage1_planned_memory_gb": _gb(planned["stage1_bytes"]),
        "extraction_peak_memory_gb": _gb(extraction["peak_bytes"]),
        "extraction_planned_memory_gb": _gb(planned["extraction_bytes"]),
        "loader_stall_share": round(stage1["stall_share"], 3),
        "prediction_max_abs_diff": difference, "prediction_tolerance": PREDICTION_TOLERANCE,
        "predictions_agree": bool(difference <= PREDICTION_TOLERANCE), "target": TARGET,
    }
    result["meets_target"] = bool(train_ratio >= TARGET and extract_ratio >= TARGET and result["predictions_agree"])
    return result


def load_configs(args, data: Path, work: Path):
    """The two configs reduced in steps only: paths into ``data`` and ``work``, pretrained weights off (nothing is
    downloaded), one epoch of ``--steps`` steps, no tracker; ``--stage1-override`` / ``--stage2-override`` last."""
    from chexfusion.config import load_config
    from chexfusion.stage1.config import Stage1Config
    from chexfusion.stage2.config import Stage2Config

    paths = [f"data.image_root={data}", f"data.train_csv={data / 'train.csv'}",
             f"data.val_csv={data / 'development.csv'}", "data.test_csv=null"]
    run = ["name=gpu-check", "train.epochs=1", f"train.max_steps_per_epoch={args.steps}", "train.log_with=none",
           "train.checkpoint_every_steps=0"]
    s1 = load_config(Stage1Config, args.stage1_config, paths + run + [f"output_dir={work / 'stage1'}",
                                                                       "model.pretrained=false",
                                                                       *args.stage1_override])
    s2 = load_config(Stage2Config, args.stage2_config,
                     paths + run + [f"output_dir={work / 'stage2'}", f"features.store={work / 'store'}",
                                    f"features.shared_backbone={work / 'stage1' / 'gpu-check'}",
                                    *args.stage2_override])
    return s1, s2


def run_check(args, data: Path, work: Path) -> dict:
    """Every measurement on ``args.device``; the report's JSON."""
    from chexfusion.data.cxr_lt import read_cxr_lt
    from chexfusion.stage2.train import train_stage2

    s1, s2 = load_configs(args, data, work)
    train_table = read_cxr_lt(s1.data.train_csv)
    num_classes, steps = len(train_table.classes), min(args.steps, len(train_table) // s1.train.batch_size)
    stage1 = product_stage1(s1, args.device, steps)
    bare_train = bare_train_rate(s1, num_classes, args.device, steps)
    extraction = product_extraction(s2, args.device)
    bare_forward = bare_forward_rate(s1, num_classes, args.device, s2.features.batch_size,
                                     max(1, extraction["images"] // s2.features.batch_size))
    train_stage2(s2)
    difference = prediction_difference(work / "stage2" / "gpu-check", data / "development.csv", data, args.device,
                                       args.predict_studies)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return report(name, stage1, bare_train, extraction, bare_forward, planned_memory(s1, s2, num_classes),
                  difference, s1)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=300,
                        help="synthetic studies at --image-size (~1.65 images each)")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30, help="stage-1 and stage-2 steps (one epoch each)")
    parser.add_argument("--predict-studies", type=int, default=16, help="studies predicted on the device and on CPU")
    parser.add_argument("--stage1-config", type=Path, default=STAGE1_CONFIG)
    parser.add_argument("--stage2-config", type=Path, default=STAGE2_CONFIG)
    parser.add_argument("--data", type=Path, default=None, help="an existing synth folder instead of writing one")
    parser.add_argument("--work", type=Path, default=support.OUT / "gpu-check", help="runs and store (replaced)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the same steps on the CPU, to check the wiring (figures meaningless)")
    parser.add_argument("--stage1-override", action="append", default=[], metavar="key=value",
                        help="stage-1 config key, e.g. train.channels_last=true or train.compile=true (repeatable)")
    parser.add_argument("--stage2-override", action="append", default=[], metavar="key=value",
                        help="stage-2 config key (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    refusal = no_cuda_line(args.device)
    if refusal:
        print(refusal)
        return None
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    data = args.data or support.demo_data(args.studies, args.image_size)
    result = {**run_check(args, data, args.work), "machine": support.machine_info()}
    support.write_result("gpu_check", result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
