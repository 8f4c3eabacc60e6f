"""Noisy-student self-training for stage 1 (Xie et al. 2020; CheXFusion's stage 1 on NIH, CheXpert, VinDr-CXR).

Round 0 trains a teacher on the labelled CSV exactly as plain ``chexfusion stage1`` does. Each later round:

1. the previous round's model (the teacher) scores every external image with its best weights -- sigmoid
   probabilities, averaged over the test-time views (``tta_hflip``, ``tta``) -- and the probabilities are saved as
   ``round-r/pseudo_labels.parquet`` (``dataset``, ``dicom_id``, one column per class; NaN for an image the
   teacher could not read, which the student then skips and counts);
2. the student's targets on an external image are the set's own labels where it has them (a 1 or 0 that the
   label-map table gave it), the teacher's probability (``pseudo_label: soft``) or its thresholded value
   (``hard``) where the set says nothing, and ``uncertain_label`` decides the set's -1 entries. The ignore mask
   is used only where nothing is known (``uncertain_label: ignore``): every other entry has a target;
3. the student trains on labelled + pseudo-labelled images under noise: the strong augmentation, stochastic
   depth in the backbone and dropout in the ML-Decoder. It starts from scratch, as in the Noisy Student paper
   (``student_init: teacher`` starts it from the teacher's weights, cheaper when compute is short), and is
   validated on the same labelled validation CSV, so teacher and student compare directly;
4. the student becomes the next round's teacher.

Each round is a complete stage-1 run folder ``<output_dir>/<name>/round-<r>`` (resumable through its own
checkpoint; a finished round -- one with ``metrics.json`` -- is never redone, and saved pseudo-labels are reused).
The top folder ``<output_dir>/<name>`` holds the user's config, ``noisy_student.json`` (the per-round report)
and a copy of the final round's ``model.safetensors`` / ``run.json`` / ``metrics.json``, so the feature store,
``predict`` and stage 2 use the last student without knowing there were rounds. Raising ``noisy_student.rounds``
and re-running adds rounds on top of the finished ones.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from .. import training
from ..config import save_config, to_dict
from ..data.cxr_lt import CxrLtTable
from ..data.external import known_classes, read_external
from ..data.image_dataset import ImageDataset
from ..errors import UserError
from ..io import atomic_path, atomic_write_json
from ..run_folder import copy_encoder_config
from ..training import HEADLINE
from .config import ExternalSetConfig, NoisyStudentConfig, Stage1Config
from .model import load_stage1_run
from .train import make_loader, predict_probs, select_rows, train_stage1

PSEUDO_LABELS = "pseudo_labels.parquet"
REPORT = "noisy_student.json"
TEACHER_KEY = b"chexfusion.teacher_sha256"
FINAL_FILES = ("model.safetensors", "run.json")


def round_name(r: int) -> str:
    return f"round-{r}"


def round_config(cfg: Stage1Config, r: int) -> Stage1Config:
    """The plain stage-1 config of round ``r``: the teacher's settings for round 0, the student's noise after."""
    out = copy.deepcopy(cfg)
    out.output_dir = str(Path(cfg.output_dir) / cfg.name)
    out.name = round_name(r)
    ns = cfg.noisy_student
    out.noisy_student.rounds = 0  # each round folder is one plain stage-1 run
    if r > 0:
        out.augment = copy.deepcopy(ns.student_augment)
        out.model.drop_path_rate = ns.student_drop_path
        out.model.decoder_dropout = ns.student_dropout
        if ns.student_epochs:
            out.train.epochs = ns.student_epochs
    return out


# ---- the external sets -----------------------------------------------------------------------------------


def read_external_sets(cfg: Stage1Config, classes: list[str]) -> list[tuple[ExternalSetConfig, CxrLtTable]]:
    """Every external set over the project's classes, restricted to the run's view (data.views)."""
    sets = []
    for entry in cfg.noisy_student.external:
        options = {"agreement_rule": entry.agreement, "image_suffix": entry.image_suffix} \
            if entry.format == "vindr" else {}
        table = read_external(entry.format, entry.csv, classes, **options)
        rows = select_rows(table, cfg.data.views)
        sets.append((entry, table.select(rows) if len(rows) != len(table) else table))
    if not sum(len(table) for _, table in sets):
        raise UserError(f"the external sets of noisy_student.external hold no {cfg.data.views} images")
    return sets


def describe_sets(sets, classes: list[str]) -> list[dict]:
    return [{"name": entry.key, "format": entry.format, "csv": entry.csv, "images": len(table),
             "labelled_classes": known_classes(entry.format, classes)} for entry, table in sets]


# ---- pseudo-labels ---------------------------------------------------------------------------------------


def pseudo_label(accelerator, teacher_dir: Path, sets, cfg: Stage1Config) -> pd.DataFrame:
    """The teacher's probabilities for every external image (NaN rows: images it could not read)."""
    teacher = load_stage1_run(teacher_dir, map_location=str(accelerator.device))
    frames = []
    for entry, table in sets:
        dataset = ImageDataset(table, entry.image_root, teacher.preprocess, skip_bad_images=cfg.data.skip_bad_images)
        loader = accelerator.prepare(make_loader(dataset, cfg.train.batch_size, None, cfg.train.num_workers))
        probs, rows, _ = predict_probs(teacher.model, loader, accelerator, cfg.tta_views(),
                                       f"pseudo-label {entry.key}")
        full = np.full((len(table), len(teacher.classes)), np.nan, dtype=np.float32)
        full[rows] = probs
        frame = pd.DataFrame(full, columns=teacher.classes)
        frame.insert(0, "dicom_id", table.frame["dicom_id"].to_numpy())
        frame.insert(0, "dataset", entry.key)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_pseudo_labels(path: Path, frame: pd.DataFrame, teacher_sha256: str) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), TEACHER_KEY: teacher_sha256.encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_pseudo_labels(path: Path, teacher_sha256: str, sets, classes: list[str]) -> pd.DataFrame:
    """Saved pseudo-labels, checked against the teacher and aligned to the external tables' rows."""
    table = pq.read_table(path)
    made_by = (table.schema.metadata or {}).get(TEACHER_KEY, b"").decode()
    if made_by != teacher_sha256:
        raise UserError(f"{path} was made by another teacher than {path.parent.parent}: delete it to pseudo-label "
                        "again")
    frame = table.to_pandas()
    if list(frame.columns[2:]) != list(classes):
        raise UserError(f"{path} has other class columns than the teacher: delete it to pseudo-label again")
    wanted = pd.concat([pd.DataFrame({"dataset": entry.key, "dicom_id": t.frame["dicom_id"].to_numpy()})
                        for entry, t in sets], ignore_index=True)
    aligned = wanted.merge(frame, on=["dataset", "dicom_id"], how="left", indicator=True)
    missing = np.flatnonzero((aligned["_merge"] == "left_only").to_numpy())
    if len(missing):
        row = wanted.iloc[missing[0]]
        raise UserError(f"{path} has no pseudo-label for {row['dataset']} image '{row['dicom_id']}' "
                        f"({len(missing)} missing): the external sets changed, delete it to pseudo-label again")
    return aligned.drop(columns="_merge")


def align_to_prevalence(probs: np.ndarray, prevalence: np.ndarray, steps: int = 60) -> np.ndarray:
    """Shift each class's logits by one constant so that its mean probability over the images equals ``prevalence``.

    Losses built for the long tail (ASL, focal) leave a model's probabilities far above the class frequencies (the
    demo teacher's mean is ~6x the mean prevalence); as soft targets those would teach the student that every finding
    is a coin flip. One shift per class keeps the teacher's ranking of the images (all AUROC / AP information) and
    restores the frequencies the labelled data has -- an assumption that the external set's prevalence is similar.
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-6, 1 - 1e-6)
    target = np.clip(np.asarray(prevalence, dtype=np.float64), 1e-4, 1 - 1e-4)
    logits = np.log(probs) - np.log1p(-probs)
    low, high = np.full(target.shape, -30.0), np.full(target.shape, 30.0)
    for _ in range(steps):  # bisection: the mean probability grows with the shift
        shift = 0.5 * (low + high)
        too_high = (1.0 / (1.0 + np.exp(-(logits + shift)))).mean(axis=0) > target
        high, low = np.where(too_high, shift, high), np.where(too_high, low, shift)
    return (1.0 / (1.0 + np.exp(-(logits + 0.5 * (low + high))))).astype(np.float32)


def student_targets(raw: np.ndarray, probs: np.ndarray, ns: NoisyStudentConfig) -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask) [N, K]: the set's own 1 / 0 where it has them, the teacher's (soft or hard) label elsewhere."""
    raw = np.asarray(raw, dtype=np.float32)
    pseudo = probs.astype(np.float32) if ns.pseudo_label == "soft" else (probs >= ns.threshold).astype(np.float32)
    targets = np.where(np.isin(raw, (0.0, 1.0)), raw, pseudo).astype(np.float32)
    mask = np.ones_like(targets)
    uncertain = raw == -1.0
    if ns.uncertain_label in ("zero", "one"):
        targets[uncertain] = 1.0 if ns.uncertain_label == "one" else 0.0
    elif ns.uncertain_label == "ignore":
        targets[uncertain], mask[uncertain] = 0.0, 0.0
    return targets, mask


class PseudoLabelledImages(torch.utils.data.Dataset):
    """The external images the teacher could read, with their student targets; ``row`` = row of the pseudo-labels."""

    def __init__(self, sets, cfg: Stage1Config, preprocess, targets: np.ndarray, mask: np.ndarray,
                 keep: np.ndarray):
        self.parts = [ImageDataset(table, entry.image_root, preprocess, skip_bad_images=cfg.data.skip_bad_images)
                      for entry, table in sets]
        self.starts = np.cumsum([0] + [len(part) for part in self.parts])
        self.targets, self.mask = torch.from_numpy(targets), torch.from_numpy(mask)
        self.keep = np.asarray(keep, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int) -> dict:
        row = int(self.keep[i])
        part = int(np.searchsorted(self.starts, row, side="right")) - 1
        item = self.parts[part][row - int(self.starts[part])]
        item["row"] = row
        if "image" in item:
            item["target"], item["mask"] = self.targets[row], self.mask[row]
        return item


# ---- rounds ------------------------------------------------------------------------------------------------


def _finished(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _check_top_config(top: Path, cfg: Stage1Config) -> None:
    """Refuse a changed config, except a changed number of rounds (more rounds build on the finished ones)."""
    current = to_dict(cfg)
    saved = top / "config.yaml"
    if saved.is_file():
        before = (yaml.safe_load(saved.read_text()) or {}).get("noisy_student") or {}
        current["noisy_student"]["rounds"] = before.get("rounds", cfg.noisy_student.rounds)
    training.check_same_config(top, current)


def _student_data(accelerator, r: int, top: Path, cfg: Stage1Config):
    """Pseudo-label the external sets with round r-1's model (or reuse round r's saved labels); the student's data."""
    log = accelerator.print
    teacher_dir = top / round_name(r - 1)
    teacher = load_stage1_run(teacher_dir)
    sets = read_external_sets(cfg, teacher.classes)
    path = top / round_name(r) / PSEUDO_LABELS
    if path.is_file():
        log(f"noisy student round {r}: reusing {path}")
        frame = read_pseudo_labels(path, teacher.weights_sha256, sets, teacher.classes)
    else:
        for info in describe_sets(sets, teacher.classes):
            log(f"noisy student round {r}: {info['name']} ({info['format']}) {info['images']} images, own labels for "
                f"{len(info['labelled_classes'])} of {len(teacher.classes)} classes; the teacher fills the rest")
        frame = pseudo_label(accelerator, teacher_dir, sets, cfg)
        if accelerator.is_main_process:
            write_pseudo_labels(path, frame, teacher.weights_sha256)
        accelerator.wait_for_everyone()
    probs = frame[teacher.classes].to_numpy(dtype=np.float32, copy=True)
    raw = np.concatenate([table.raw_labels for _, table in sets])
    readable = ~np.isnan(probs).any(axis=1)
    if cfg.noisy_student.align_prevalence and readable.any():
        probs[readable] = align_to_prevalence(probs[readable], teacher.train_prevalence)
    targets, mask = student_targets(raw, np.nan_to_num(probs), cfg.noisy_student)
    data = PseudoLabelledImages(sets, cfg, teacher.preprocess, targets, mask, np.flatnonzero(readable))
    own = np.isin(raw, (0.0, 1.0))
    stats = {"external_images": int(len(frame)), "unreadable_external_images": int((~readable).sum()),
             "own_label_fraction": round(float(own[readable].mean()) if readable.any() else 0.0, 4),
             "mean_pseudo_probability": round(float(np.nanmean(np.where(own, np.nan, probs))), 4)
             if (~own).any() else None,
             "sets": describe_sets(sets, teacher.classes)}
    if stats["unreadable_external_images"]:
        log(f"noisy student round {r}: {stats['unreadable_external_images']} external images could not be read "
            "by the teacher and are left out of the student's training")
    return data, stats


def _headline(metrics: dict | None) -> dict | None:
    return None if metrics is None else {k: metrics.get(k) for k in HEADLINE}


def build_report(cfg: Stage1Config, top: Path, results: list[dict], stats: dict[int, dict]) -> dict:
    rounds = []
    for r, result in enumerate(results):
        entry = {"round": r, "run": round_name(r), "best_epoch": result.get("best_epoch"),
                 "pseudo_labelled_images": result.get("extra_train_images", 0),
                 "validation": _headline(result["validation"]), "test": _headline(result.get("test"))}
        if r > 0:
            entry["teacher_validation"] = _headline(results[r - 1]["validation"])
            entry["delta_mAP"] = _delta(entry["validation"], entry["teacher_validation"])
            entry.update(stats.get(r) or _previous_stats(top, r) or {})
        rounds.append(entry)
    return {"name": cfg.name, "rounds": cfg.noisy_student.rounds, "pseudo_label": cfg.noisy_student.pseudo_label,
            "student_init": cfg.noisy_student.student_init, "table": rounds}


def _delta(student: dict, teacher: dict) -> float | None:
    if student.get("mAP") is None or teacher.get("mAP") is None:
        return None
    return round(student["mAP"] - teacher["mAP"], 6)


def _previous_stats(top: Path, r: int) -> dict | None:
    """Pseudo-label statistics of a round finished in an earlier invocation (kept in the last report)."""
    path = top / REPORT
    if not path.is_file():
        return None
    for entry in json.loads(path.read_text()).get("table", []):
        if entry.get("round") == r:
            return {k: entry[k] for k in ("external_images", "unreadable_external_images", "own_label_fraction",
                                          "mean_pseudo_probability", "sets") if k in entry}
    return None


def format_report(report: dict) -> str:
    """The per-round table: validation metrics of each round's model, and the student's change over its teacher."""
    def fmt(v):
        return "   n/a" if v is None else f"{v:6.3f}"

    lines = [f"noisy student '{report['name']}' ({report['pseudo_label']} pseudo-labels, student from "
             f"{report['student_init']}): validation",
             f"{'round':<7}{'model':<9}{'mAP':>7}{'mAUROC':>8}{'head':>7}{'medium':>8}{'tail':>7}"
             f"{'d mAP':>8}  pseudo-labelled"]
    for entry in report["table"]:
        v = entry["validation"]
        role = "teacher" if entry["round"] == 0 else "student"
        delta = "" if entry.get("delta_mAP") is None else f"{entry['delta_mAP']:+.3f}"
        lines.append(f"{entry['round']:<7}{role:<9}{fmt(v['mAP']):>7}{fmt(v['mAUROC']):>8}{fmt(v['head_mAP']):>7}"
                     f"{fmt(v['medium_mAP']):>8}{fmt(v['tail_mAP']):>7}{delta:>8}  {entry['pseudo_labelled_images']}")
    return "\n".join(lines)


def _publish_final(top: Path, final: Path, report: dict, name: str) -> dict:
    """Copy the last round's model to the top folder, so the run folder is used like any stage-1 run."""
    for filename in FINAL_FILES:
        with atomic_path(top / filename) as tmp:
            shutil.copyfile(final / filename, tmp)
    copy_encoder_config(final, top)  # before run.json's rewrite below, which may name it
    info = json.loads((top / "run.json").read_text())
    info.update({"name": name, "noisy_student_round": final.name})
    atomic_write_json(top / "run.json", info)
    metrics = {**json.loads((final / "metrics.json").read_text()), "noisy_student": report}
    atomic_write_json(top / REPORT, report)
    atomic_write_json(top / "metrics.json", metrics)  # last: its presence marks the whole run finished
    return metrics


def train_noisy_student(cfg: Stage1Config) -> dict:
    """Run (or resume, or report) ``cfg.noisy_student.rounds`` rounds; return the final metrics."""
    accelerator = training.make_accelerator(cfg.train)
    log = accelerator.print
    top = Path(cfg.output_dir) / cfg.name
    _check_top_config(top, cfg)
    done = _finished(top)
    if done is not None and done.get("noisy_student", {}).get("rounds") == cfg.noisy_student.rounds:
        log(f"noisy student run {top} is complete (delete the folder to train it again)")
        log(format_report(done["noisy_student"]))
        return done
    if accelerator.is_main_process:
        top.mkdir(parents=True, exist_ok=True)
        save_config(cfg, top / "config.yaml")
    accelerator.wait_for_everyone()

    results, stats = [], {}
    for r in range(cfg.noisy_student.rounds + 1):
        round_cfg = round_config(cfg, r)
        run_dir = top / round_name(r)
        if r == 0 or _finished(run_dir) is not None:
            results.append(train_stage1(round_cfg))  # a finished round returns its metrics without training
            continue
        data, stats[r] = _student_data(accelerator, r, top, cfg)
        init = top / round_name(r - 1) / "model.safetensors" if cfg.noisy_student.student_init == "teacher" else None
        results.append(train_stage1(round_cfg, extra_train=data, init_weights=init))
    report = build_report(cfg, top, results, stats)
    metrics = report
    if accelerator.is_main_process:
        metrics = _publish_final(top, top / round_name(cfg.noisy_student.rounds), report, cfg.name)
    accelerator.wait_for_everyone()
    log(format_report(report))
    return metrics
