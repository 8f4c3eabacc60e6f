"""Refusing to resume or reuse a run folder that was made with a different configuration."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

# Settings that change how a run is executed but not what it computes: a run may resume with other values.
EXECUTION_ONLY_KEYS = {"train.num_workers", "train.checkpoint_every_steps", "train.cpu", "train.log_with",
                       "train.pin_memory", "train.persistent_workers"}

# Keys whose default is not what chexfusion did before the key existed: a run whose config.yaml lacks one was
# trained with this value (see docs/zero_shot.md for model.text.map_lr_scale).
BEFORE_KEY_EXISTED = {"model.text.map_lr_scale": 1.0}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.endswith("params"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_same_config(run_dir: Path, cfg_dict: dict, defaults: dict | None = None) -> None:
    """Refuse to resume or reuse a run folder that was made with a different configuration.

    A key the saved config lacks (added to chexfusion after the run was made) counts as its default in
    ``defaults``, so a newer version still recognises a run made before the key existed -- unless the run did
    something else then (``BEFORE_KEY_EXISTED``): such a run is refused, not taken for one with the new default.
    ``model.text.*`` only matters to text queries, so two learned-query configs are the same whatever it says.
    """
    import yaml

    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    current = _flatten(cfg_dict)
    for key, value in BEFORE_KEY_EXISTED.items():
        if key in current:
            saved.setdefault(key, value)
    for key, value in _flatten(defaults or {}).items():
        saved.setdefault(key, value)
    text_unused = saved.get("model.queries", "learned") == current.get("model.queries", "learned") == "learned"
    for key in sorted(set(saved) | set(current)):
        if key in EXECUTION_ONLY_KEYS or (text_unused and key.startswith("model.text.")):
            continue
        if saved.get(key) != current.get(key):
            raise UserError(f"run folder {run_dir} was made with {key}={saved.get(key)!r}, not {current.get(key)!r}: "
                            f"choose another name=... or delete the folder")
