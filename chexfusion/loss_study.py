"""The loss study (``chexfusion ablate --study losses``, ``make loss-study``): each loss through both stages.

For every loss and seed, the stage-1 config trained with that loss (run ``<name>-loss-<label>-seed<S>``), the
feature store of its frozen backbone, and the stage-2 config trained on that store with the same loss (same run
name), both scored on the split. A loss's parameters come from the stage-1 config when it names that loss (the
demo's weighted ASL keeps its written-out parameters), else from the loss's defaults, updated by the entry's own
``name:key=value`` assignments; all of them, defaults included, go into the runs' configs and the table.

Stage 1 is scored as the max over a study's images of its per-image probabilities (stage 2's stage-1 baseline:
the same images, from the same store), stage 2 at image level (each image carries its study's prediction), the
CXR-LT convention; the per-image stage-1 figures are kept in the JSON. Over seeds the table gives the mean and
the sample standard deviation (ddof 1; 0 for one seed), the JSON also each seed's value and the min / max.

Every run is an ordinary run folder, so a finished one is reused and an interrupted one resumes: the study
trains only what is missing.
"""

from __future__ import annotations

import dataclasses
import re
from itertools import product
from pathlib import Path

import numpy as np
import yaml

from .errors import UserError
from .io import atomic_write_json, atomic_write_text
from .name_lists import check_distinct, parse_name_list

DEFAULT_LOSSES = "bce,weighted_bce,focal,asl,weighted_asl,ral,reweighted"
COLUMNS = ("mAP", "mAUROC", "head_mAP", "medium_mAP", "tail_mAP", "group_avg_mAP")
STAGES = {"stage1": "stage 1, max over images", "stage2": "stage 2"}
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclasses.dataclass(frozen=True)
class StudyLoss:
    """One row group of the table: the loss ``name`` with all its ``params``; ``label`` names its runs."""

    label: str
    name: str
    params: dict


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything but distinct non-negative integers is a one-line error."""
    names = parse_name_list(text, "--seeds")
    if not all(name.isdigit() for name in names):
        bad = next(name for name in names if not name.isdigit())
        raise UserError(f"--seeds: '{bad}' is not a non-negative integer")
    return check_distinct([int(name) for name in names], "--seeds")


def _assignments(entry: str, items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--losses '{entry}': '{item}' is not key=value")
        params[key] = yaml.safe_load(raw)
    return params


def parse_study_losses(text: str, config_loss) -> list[StudyLoss]:
    """``"bce,weighted_bce:weights=ratio,ral:class_weighted=true"`` -> checked entries, before anything trains."""
    from .losses import loss_parameters

    losses = []
    for entry in parse_name_list(text, "--losses"):
        name, *items = entry.split(":")
        given = dict(config_loss.params) if name == config_loss.name else {}
        given.update(_assignments(entry, items))
        try:
            params = loss_parameters(name, given)
        except UserError as error:
            raise UserError(f"--losses '{entry}': {error}") from None
        label = "-".join([name, *(item.replace("=", "-") for item in items)])
        if not _LABEL.match(label):
            raise UserError(f"--losses '{entry}': use letters, digits, '.', '_', '+', '-' (it names run folders)")
        losses.append(StudyLoss(label, name, params))
    check_distinct([loss.label for loss in losses], "--losses")
    return losses


def study_configs(stage1_base, stage2_base, loss: StudyLoss, seed: int):
    """The (stage-1, stage-2) configs of one loss and seed: the base configs with the loss, seed and names."""
    from .stage1.config import LossConfig

    suffix = f"-loss-{loss.label}-seed{seed}"
    loss_cfg = LossConfig(name=loss.name, params=dict(loss.params))
    stage1 = dataclasses.replace(stage1_base, name=stage1_base.name + suffix, seed=seed, loss=loss_cfg)
    features = dataclasses.replace(stage2_base.features, store=stage2_base.features.store + suffix,
                                   shared_backbone=str(Path(stage1.output_dir) / stage1.name))
    stage2 = dataclasses.replace(stage2_base, name=stage2_base.name + suffix, seed=seed, loss=loss_cfg,
                                 features=features)
    return stage1, stage2


def train_pair(stage1_cfg, stage2_cfg, split: str) -> dict:
    """Train (or reuse) stage 1, its store and stage 2; their metrics on ``split``."""
    from .feature_store.command import write_features
    from .stage1.command import train as train_stage1
    from .stage2.train import train_stage2

    stage1 = train_stage1(stage1_cfg)
    write_features(stage2_cfg)
    stage2 = train_stage2(stage2_cfg)
    metrics = {"stage1": stage2.get("stage1_baseline", {}).get(split), "stage2": stage2.get(split),
               "stage1_per_image": stage1.get(split)}
    if metrics["stage2"] is None or metrics["stage1"] is None:
        raise UserError(f"run {stage2_cfg.output_dir}/{stage2_cfg.name}: no {split} metrics for both stages (is "
                        f"data.test_csv set, features.pool null?)")
    return {stage: {c: m.get(c) for c in COLUMNS} for stage, m in metrics.items() if m is not None}


def spread(values: list) -> dict:
    """Mean, sample std (ddof 1; 0 for one value), min and max; all None if any value is None."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "min": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "min": float(array.min()), "max": float(array.max())}


def summarise(losses: list[StudyLoss], seeds: list[int], results: dict) -> list[dict]:
    """One row per loss and stage: each seed's figures and their spread per column."""
    rows = []
    for loss, stage in product(losses, STAGES):
        per_seed = {seed: results[(loss.label, seed)][stage] for seed in seeds}
        rows.append({"loss": loss.label, "name": loss.name, "params": loss.params, "stage": stage,
                     "seeds": {str(seed): figures for seed, figures in per_seed.items()},
                     **{c: spread([per_seed[seed][c] for seed in seeds]) for c in COLUMNS}})
    return rows


def _cell(stats: dict) -> str:
    return "n/a" if stats["mean"] is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={'null' if v is None else v}" for k, v in params.items()) or "none"


def markdown(rows: list[dict], seeds: list[int], split: str, header: str) -> str:
    """The table: mean ± sample std over the seeds, each loss's parameters on its stage-1 row."""
    lines = [f"# Loss study ({split} split, image level, mean ± std over seeds {', '.join(map(str, seeds))})", "",
             header, "", "| loss | stage | " + " | ".join(COLUMNS) + " | parameters |",
             "|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for row in rows:
        params = _params_text(row["params"]) if row["stage"] == "stage1" else "same"
        cells = [_cell(row[c]) for c in COLUMNS]
        lines.append(f"| {row['loss']} | {STAGES[row['stage']]} | " + " | ".join(cells) + f" | {params} |")
    return "\n".join(lines) + "\n"


def run_study(args) -> int:
    """``chexfusion ablate --study losses``: every loss x seed through both stages, then the tables."""
    from .config import load_config
    from .stage1.config import Stage1Config
    from .stage2.config import Stage2Config

    stage1_base = load_config(Stage1Config, args.stage1_config, [*args.overrides, *args.stage1_set])
    stage2_base = load_config(Stage2Config, args.stage2_config, [*args.overrides, *args.stage2_set])
    if stage2_base.features.routing != "shared":
        raise UserError(f"{args.stage2_config}: the loss study trains one shared backbone per loss; "
                        f"features.routing must be shared")
    losses = parse_study_losses(args.losses or DEFAULT_LOSSES, stage1_base.loss)
    seeds = parse_seeds(args.seeds)
    results = {}
    for i, (loss, seed) in enumerate(product(losses, seeds), 1):
        print(f"loss study {i}/{len(losses) * len(seeds)}: {loss.label}, seed {seed}", flush=True)
        results[(loss.label, seed)] = train_pair(*study_configs(stage1_base, stage2_base, loss, seed), args.split)
    rows = summarise(losses, seeds, results)
    header = (f"Stage 1: `{args.stage1_config}` ({stage1_base.model.backbone}, {stage1_base.data.image_size} px, "
              f"{stage1_base.train.epochs} epochs), stage 2: `{args.stage2_config}` ({stage2_base.train.epochs} "
              f"epochs), each trained with the row's loss; stage 1 scored as the max over a study's images.")
    out = Path(args.out)
    atomic_write_json(out / "losses.json", {"split": args.split, "seeds": seeds, "spread": "sample std (ddof 1)",
                                            "stage1": "max over a study's images", "rows": rows,
                                            "stage1_per_image": {f"{k[0]}/seed{k[1]}": v.get("stage1_per_image")
                                                                 for k, v in results.items()}})
    text = markdown(rows, seeds, args.split, header)
    atomic_write_text(out / "losses.md", text)
    print(text)
    print(f"wrote {out / 'losses.md'} and {out / 'losses.json'}")
    return 0

