"""Run folders on disk: weights files, ``run.json`` and the checks that make a folder safe to load.

A run folder (stage 1 or stage 2) is self-contained: ``config.yaml`` (the
resolved config), ``run.json`` (what inference needs: classes, training
prevalence, preprocessing, feature shape, the weights' content hash) and
``model.safetensors``. Everything that reads or writes those files goes through
here, so a damaged or foreign folder is refused the same way, with one line
naming the file and key, before any model is built from it. Weights are
safetensors only: nothing is ever unpickled.

What decides what the weights compute (the classes and their order, the
preprocessing, the backbone and its view, the stage-2 routing, the config's
``model`` section that builds the head) is also written into the weights file
itself, as safetensors metadata, when the run is finished (``write_run_info``):
so ``weights_sha256`` covers it, and a ``run.json`` edited afterwards (classes
reordered: every column silently swapped) is refused on load naming the field.
Runs saved before this have no such metadata; they load as before, checked by
the hash alone.

Building a model from a folder is the stages' business (``stage1.model``,
``stage2.model``); ``chexfusion.inference.load_run`` picks by kind.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .io import atomic_path, atomic_write_json, file_sha256

METADATA_KEY = "chexfusion.run"  # one key holding a JSON object: safetensors writes a map's keys in no fixed order

RUN_INFO = "run.json"
WEIGHTS = "model.safetensors"
KINDS = ("stage1", "stage2", "ensemble", "clip")

# run.json keys every loader relies on, by kind, with the JSON type each must have
REQUIRED_KEYS = {
    "stage1": {"classes": list, "train_prevalence": list, "preprocess": dict, "feature_shape": list,
               "weights": str, "weights_sha256": str},
    "stage2": {"classes": list, "train_prevalence": list, "preprocess": dict, "feature_shape": list,
               "weights": str, "weights_sha256": str, "routing": str, "unknown_view": str, "backbones": dict,
               "feature_dtype": str, "max_images": int},
    "ensemble": {"classes": list, "train_prevalence": list, "members": list, "combine": str},
    "clip": {"classes": list, "train_prevalence": list, "preprocess": dict, "weights": str, "weights_sha256": str,
             "text_encoder": str, "text_pooling": str, "prompts": dict},
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


# run.json fields (by kind) that change what the weights compute; the weights file records them (see above).
# ``text_queries`` is not among them: it is checked against the text encoder's own files when the head is rebuilt.
WEIGHT_DEFINING = {
    "stage1": ("classes", "preprocess", "backbone", "views", "feature_shape"),
    "stage2": ("classes", "preprocess", "routing", "unknown_view", "backbones", "feature_shape", "feature_dtype",
               "pool", "max_images"),
    "clip": ("classes", "preprocess", "backbone", "text_encoder", "text_pooling", "embed_dim", "prompts"),
}


# config.yaml ``model`` keys that change how the weights were trained, not what they compute
TRAINING_ONLY_MODEL_KEYS = {"pretrained", "checkpoint_path", "drop_path_rate", "decoder_dropout", "dropout",
                            "map_lr_scale"}


def write_run_info(run_dir: str | Path, info: dict) -> None:
    """Record what defines the weights inside ``info["weights"]``, then write ``run.json`` (with the weights'
    hash) last: its presence marks a finished run. An ensemble has no weights of its own (its members do)."""
    if info.get("kind") not in KINDS:
        raise ValueError(f"run info needs a kind in {KINDS}")
    run_dir = Path(run_dir)
    if info["kind"] not in WEIGHT_DEFINING:
        atomic_write_json(run_dir / RUN_INFO, info)
        return
    weights = run_dir / info["weights"]
    _rewrite_with_metadata(weights, _defining_record(run_dir, info))
    atomic_write_json(run_dir / RUN_INFO, {**info, "weights_sha256": file_sha256(weights)})


def _defining_record(run_dir: Path, info: dict) -> dict:
    """The fields of ``info`` (and the config's ``model`` section) that decide what the weights compute."""
    from .config import read_yaml

    record = {key: _comparable(key, info.get(key)) for key in WEIGHT_DEFINING[info["kind"]]}
    if (run_dir / "config.yaml").is_file():
        record["model"] = _model_section(read_yaml(run_dir / "config.yaml").get("model"))
    return json.loads(json.dumps(record))  # as it reads back from JSON (tuples are lists)


def _model_section(model):
    """config.yaml's ``model`` section (what builds the network) less what acts only while training: a
    noisy-student run's folder holds its teacher's config and its last student's weights."""
    if not isinstance(model, dict):
        return model
    kept = {k: v for k, v in model.items() if k not in TRAINING_ONLY_MODEL_KEYS}
    if isinstance(kept.get("text"), dict):
        kept["text"] = {k: v for k, v in kept["text"].items() if k not in TRAINING_ONLY_MODEL_KEYS}
    return kept


def _comparable(key: str, value):
    """A stage-2 run's backbones are recorded by what they compute (weights hash, encoder), not by where their
    copy came from."""
    if key == "backbones" and isinstance(value, dict):
        return {slot: {k: v for k, v in entry.items() if k in ("encoder", "weights_sha256")}
                for slot, entry in value.items() if isinstance(entry, dict)}
    return value


def _rewrite_with_metadata(path: Path, record: dict) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(record, sort_keys=True)})


def check_weights_record(run_dir: Path, info: dict, weights: Path) -> None:
    """Refuse a run.json (or config.yaml) that disagrees with what its weights file records, naming the field;
    a weights file without the record (a run saved before it existed) passes."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            stored = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises its own error type for a damaged header
        raise UserError(f"{weights} is not a readable safetensors file ({exc})") from None
    if stored is None:
        return
    recorded, current = json.loads(stored), _defining_record(run_dir, info)
    for key, value in recorded.items():
        if current.get(key) != value:
            where = run_dir / ("config.yaml" if key == "model" else RUN_INFO)
            raise UserError(f"{where}: '{_first_difference(key, value, current.get(key))}' is not what "
                            f"{weights.name} was trained with (the weights file records it): the run folder was "
                            "edited; copy the run again or retrain it")


def _first_difference(key: str, recorded, current) -> str:
    """The dotted key of the first value that differs between two JSON values (``key`` itself for a leaf)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        for name in sorted(set(recorded) | set(current)):
            if recorded.get(name) != current.get(name):
                return _first_difference(f"{key}.{name}", recorded.get(name), current.get(name))
    return key


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
    check_weights_record(run_dir, info, weights)
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
