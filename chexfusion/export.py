"""``chexfusion export``: a run folder copied as a Hugging Face model repository, ready to upload.

The copy holds what loading needs (weights, config, run record, the stage-1
backbones of a stage-2 run, the calibration if fitted) and what a reader of the
Hub page needs (``README.md`` model card, ``config.json``, metrics), never the
resume checkpoint. It is loaded back and its predictions compared with the
original's on a synthetic study before the command reports success.
"""

from __future__ import annotations

import shutil
from pathlib import Path

KEEP = ("model.safetensors", "config.yaml", "run.json", "metrics.json", "history.jsonl", "calibration.json")


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a stage-1 or stage-2 run folder (or a Hub id in the cache)")
    parser.add_argument("--out", required=True, help="folder to write (must not exist, or be empty)")


def export_run(model_path, out) -> Path:
    from .errors import UserError
    from .hub import resolve_run
    from .inference import load_run
    from .io import check_output_folder
    from .model_card import write_model_card
    from .run_folder import copy_encoder_config

    source, out = resolve_run(model_path), check_output_folder(out)
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} is not an empty folder")
    load_run(source)  # refuses a damaged or foreign folder before anything is written
    tmp = out.with_name(out.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in KEEP:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)
    if (source / "backbones").is_dir():
        shutil.copytree(source / "backbones", tmp / "backbones")
    copy_encoder_config(source, tmp)
    write_model_card(tmp)
    _check_same_predictions(source, tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def _check_same_predictions(source: Path, copy: Path) -> None:
    """The copy must score a study exactly as the original does (a random image, both views)."""
    import numpy as np

    from .errors import UserError
    from .inference import load_predictor

    original, exported = load_predictor(source, "cpu"), load_predictor(copy, "cpu")
    image = np.random.default_rng(0).uniform(size=(original.preprocess.image_size,) * 2).astype(np.float32)
    a = original.predict_study([image, image], ["frontal", "lateral"]).probabilities
    b = exported.predict_study([image, image], ["frontal", "lateral"]).probabilities
    if not np.array_equal(a, b):
        raise UserError(f"the exported copy of {source} does not predict as the original (max difference "
                        f"{np.abs(a - b).max():.2e}); nothing was written to the output")


def run(args) -> int:
    out = export_run(args.model, args.out)
    print(f"exported {args.model} to {out} (a Hugging Face model repository: README.md model card, config.json, "
          "model.safetensors); upload it with: huggingface-cli upload ORG/NAME " + str(out))
    return 0
