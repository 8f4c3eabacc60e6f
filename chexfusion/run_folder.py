"""Run folders on disk: weights files, ``run.json`` and the checks that make a folder safe to load.

A run folder (stage 1 or stage 2) is self-contained: ``config.yaml`` (the
resolved config), ``run.json`` (what inference needs: classes, training
prevalence, preprocessing, feature shape, the weights' content hash) and
``model.safetensors``. Everything that reads or writes those files goes through
here, so a damaged or foreign folder is refused the same way, with one line
naming the file and key, before any model is built from it. Weights are
safetensors only: nothing is ever unpickled.

Building a model from a folder is the stages' business (``stage1.model``,
``stage2.model``); ``chexfusion.inference.load_run`` picks by kind.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .io import atomic_path, atomic_write_json, file_sha256

RUN_INFO = "run.json"
WEIGHTS = "model.safetensors"
KINDS = ("stage1", "stage2", "ensemble")

# run.json keys every loader relies on, by kind, with the JSON type each must have
REQUIRED_KEYS = {
    "stage1": {"classes": list, "train_prevalence": list, "preprocess": dict, "feature_shape": list,
               "weights": str, "weights_sha256": str},
    "stage2": {"classes": list, "train_prevalence": list, "preprocess": dict, "feature_shape": list,
               "weights": str, "weights_sha256": str, "routing": str, "unknown_view": str, "backbones": dict,
               "feature_dtype": str, "max_images": int},
    "ensemble": {"classes": list, "train_prevalence": list, "members": list, "combine": str},
}


def run_kind(run_dir: str | Path) -> str:
    """The kind recorded in a run folder's run.json (a one-line error for anything that is not a finished run)."""
    return _read_info(Path(run_dir))["kind"]


def read_run_info(run_dir: str | Path, kind: str | None = None) -> dict:
    """``run.json`` of a finished run, checked: a JSON object of a known kind (``kind`` if given) whose keys have
    the types the loaders rely on, and one training prevalence per class."""
    run_dir = Path(run_dir)
    info = _read_info(run_dir, kind)
    path = run_dir / RUN_INFO
    for key, expected in REQUIRED_KEYS[info["kind"]].items():
        if not isinstance(info.get(key), expected) or isinstance(info.get(key), bool):
            found = "missing" if key not in info else f"a {type(info[key]).__name__}"
            raise UserError(f"{path}: key '{key}' is {found}, not a {expected.__name__}: the run folder is damaged; "
                            "retrain the run or copy it again")
    classes = info["classes"]
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise UserError(f"{path}: key 'classes' must list distinct, non-empty class names")
    if len(info["train_prevalence"]) != len(classes):
        raise UserError(f"{path}: key 'train_prevalence' has {len(info['train_prevalence'])} values for "
                        f"{len(classes)} classes")
    return info


def _read_info(run_dir: Path, kind: str | None = None) -> dict:
    path = run_dir / RUN_INFO
    what = f"{kind} run" if kind else "chexfusion run"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished {what} (no {RUN_INFO}): train it first")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): the run folder is damaged") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} holds a JSON {type(info).__name__}, not an object: the run folder is damaged")
    if info.get("kind") not in KINDS:
        raise UserError(f"{path}: unknown run kind {info.get('kind')!r} (expected one of {', '.join(KINDS)})")
    if kind is not None and info["kind"] != kind:
        raise UserError(f"{run_dir} is a {info['kind']} run, not a {kind} run")
    return info


def write_run_info(run_dir: str | Path, info: dict) -> None:
    """Write ``run.json`` last: its presence marks a finished run."""
    if info.get("kind") not in KINDS:
        raise ValueError(f"run info needs a kind in {KINDS}")
    atomic_write_json(Path(run_dir) / RUN_INFO, info)


# A stage-1 run of an hf: / open_clip: backbone keeps the encoder's architecture files here (its weights are in
# model.safetensors with the head's), so the run rebuilds without the encoder's folder.
ENCODER_CONFIG = "encoder"


def copy_encoder_config(src_run: str | Path, dst_run: str | Path) -> None:
    """Copy a run's encoder architecture folder, if it has one, wherever the run folder itself is copied."""
    import shutil

    src, dst = Path(src_run) / ENCODER_CONFIG, Path(dst_run) / ENCODER_CONFIG
    if src.is_dir():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def checked_weights(run_dir: str | Path, info: dict) -> Path:
    """The run's weights file, refused unless its content hash is the one run.json records."""
    run_dir = Path(run_dir)
    weights = run_dir / info["weights"]
    if Path(info["weights"]).is_absolute() or ".." in Path(info["weights"]).parts:
        raise UserError(f"{run_dir / RUN_INFO}: key 'weights' must name a file inside the run folder")
    if not weights.is_file():
        raise UserError(f"weights file not found: {weights}")
    if file_sha256(weights) != info["weights_sha256"]:
        raise UserError(f"{weights} does not match the hash in {run_dir / RUN_INFO}: the run folder was modified")
    return weights


# ---- weights files -----------------------------------------------------------------------------------------


def state_dict_for_file(module) -> dict:
    """Contiguous, un-shared tensors as safetensors wants them."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_weights(module, path: str | Path) -> None:
    """``module``'s state dict as a safetensors file, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state_dict_for_file(module), str(tmp))


def load_weights(module, path: str | Path,
                 advice: str = "retrain the run, or load it with the chexfusion version that trained it") -> None:
    """Load a safetensors file into ``module``; a missing or damaged file, or one written for another model
    (another config, another chexfusion version), is a one-line UserError naming the file, a tensor and
    ``advice``."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise UserError(f"{path} is not a readable safetensors file ({exc}); {advice}") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise UserError(f"{path} does not fit the model built from this config ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(reshaped)} mis-shaped tensors, e.g. '{example}'): "
                        f"it was written for another model or by another chexfusion version; {advice}")
    module.load_state_dict(state)
