"""The resumable checkpoint: weights (safetensors), optimizer, scheduler, EMA and every RNG state.

Written to a temporary folder and swapped in, so a kill never leaves half of
one. The non-weight state is a ``torch.load(weights_only=True)``-safe file:
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..run_folder import load_weights, save_weights


@dataclass
class Progress:
    """Where training stands: the next epoch to run and the optimizer steps already taken inside it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    loss_sum: float = 0.0  # the epoch's training loss so far: a resumed epoch reports the loss of all its steps
    loss_count: int = 0


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_gauss"][0], state["numpy_gauss"][1]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, ema, progress: Progress) -> None:
    """Write the resume checkpoint to a temporary folder and swap it in, so a kill never leaves half of one."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    if ema is not None:
        save_weights(ema.module, tmp / "ema.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps(progress.__dict__))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    if old.exists():
        shutil.rmtree(old)


def find_checkpoint(ckpt_dir: Path) -> Path | None:
    """The last complete checkpoint, also when a kill fell between the two renames of save_checkpoint."""
    for candidate in (Path(ckpt_dir), Path(ckpt_dir).with_name(Path(ckpt_dir).name + ".old")):
        if (candidate / "progress.json").is_file():
            return candidate
    return None


def load_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, ema) -> Progress:
    """Restore everything from a checkpoint; a damaged or foreign one is one line (never unpickled)."""
    advice = f"delete {ckpt_dir} to train this run from the start"
    try:
        progress = Progress(**json.loads((ckpt_dir / "progress.json").read_text()))
        state = torch.load(ckpt_dir / "state.pt", weights_only=True, map_location="cpu")
    except Exception as exc:  # json, torch's weights-only unpickler and truncated files raise many types
        raise UserError(f"checkpoint {ckpt_dir} is damaged or not chexfusion's ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); {advice}") from None
    load_weights(model, ckpt_dir / "model.safetensors", advice)
    if ema is not None and (ckpt_dir / "ema.safetensors").is_file():
        load_weights(ema.module, ckpt_dir / "ema.safetensors", advice)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return progress


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_history(path: Path, epochs_done: int) -> None:
    """Keep only the epochs the checkpoint covers, so a resumed run logs each epoch once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the torn last line a kill during an append leaves: that epoch re-runs
            continue
        if record["epoch"] <= epochs_done:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
