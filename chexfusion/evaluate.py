"""``chexfusion evaluate``: score a predictions CSV against CXR-LT labels.

Predictions and labels are joined on ``dicom_id`` and must cover exactly the
same images: a missing, extra or duplicate id means the two files do not
describe the same split, and metrics on the overlap would silently mislead, so
it is an error. Every label class must have a prediction column; a prediction
class without labels (a zero-shot class, say) is reported as not evaluated.
Head / medium / tail groups come from ``--train-labels`` when given (the CXR-LT
definition), else from the evaluated labels. With ``--val-pred`` and
``--val-labels``, each class's F1-optimal threshold is chosen on the validation
predictions and applied to the evaluated ones (a threshold chosen on the test
labels themselves would flatter the model). Bootstrap intervals resample
studies (:mod:`chexfusion.resampling`). Writes ``metrics.json``,
``per_class.csv``, PNG plots and ``report.md`` under ``--out``; always prints a
short summary.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .decision_metrics import DECISION_KEYS, choose_f1_thresholds, decision_metrics
from .errors import UserError
from .io import atomic_write_json, check_output_folder
from .metrics import bootstrap_intervals, compute_metrics, json_safe
from .predictions import read_predictions
from .submission import EVALUATION_TASKS as TASKS
from .submission import load_task_evaluation

UNCERTAIN_POLICIES = ("zero", "one", "ignore")
SHOW_IDS = 3  # ids quoted in a join error


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="predictions CSV: dicom_id, study_id, one column per class")
    parser.add_argument("--labels", required=True, help="CXR-LT CSV with the true labels of the same images")
    parser.add_argument("--task", choices=sorted(TASKS), default=None,
                        help="score a CXR-LT 2026 submission (ImageID + the task's classes in the official order) "
                             "against --labels (challenge layout or CXR-LT CSV); the file is checked as the server "
                             "would")
    parser.add_argument("--train-labels", help="training CSV; its prevalence defines head/medium/tail "
                        "(default: the prevalence in --labels)")
    parser.add_argument("--out", help="folder for metrics.json, per_class.csv, plots and report.md "
                        "(default: print metrics only)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="N bootstrap resamples of the studies for 95%% intervals (default 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--classes", nargs="+", metavar="CLASS",
                        help="evaluate only these classes (names, or comma-separated lists of names)")
    parser.add_argument("--pr-classes", metavar="A,B",
                        help="classes for the precision-recall plot (default: a few from each group)")
    parser.add_argument("--label-policy-uncertain", choices=UNCERTAIN_POLICIES, default="zero",
                        help="how an uncertain (-1) label counts (default zero; ignore leaves it out)")
    parser.add_argument("--threshold", type=_probability, default=0.5, help="F1 threshold (default 0.5)")
    parser.add_argument("--ece-bins", type=_positive_int, default=15, help="ECE / reliability bins (default 15)")
    parser.add_argument("--val-pred", help="validation predictions: each class's F1-optimal threshold is chosen "
                        "on them and applied to --pred (needs --val-labels)")
    parser.add_argument("--val-labels", help="CXR-LT CSV with the labels of the --val-pred images")


def _split_names(values: list[str] | str | None, option: str) -> list[str] | None:
    from .name_lists import parse_name_list

    return None if values is None else parse_name_list(values, option)


def _quote(ids) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:SHOW_IDS])
    return shown + (", ..." if len(ids) > SHOW_IDS else "")


@dataclass
class Evaluation:
    """Aligned arrays for the evaluated classes, in label-file row order."""

    classes: list[str]
    y_true: np.ndarray
    y_prob: np.ndarray
    valid: np.ndarray
    not_evaluated: list[str]
    study_ids: np.ndarray  # one per row: the bootstrap resamples studies


def choose_classes(requested: list[str] | None, pred_classes: list[str], label_classes: list[str],
                   pred_path, labels_path, option: str = "given in --classes") -> tuple[list[str], list[str]]:
    """The classes to score and the prediction classes left unevaluated for lack of labels."""
    if requested:
        seen = set()
        for name in requested:
            if name in seen:
                raise UserError(f"--classes: class '{name}' given twice")
            seen.add(name)
            if name not in pred_classes:
                raise UserError(f"{pred_path}: no prediction column for class '{name}' {option}")
            if name not in label_classes:
                raise UserError(f"{labels_path}: no label column for class '{name}' {option}")
        chosen = list(requested)
    else:
        missing = [c for c in label_classes if c not in pred_classes]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"{pred_path}: no prediction column for label class '{missing[0]}'{more}")
        chosen = list(label_classes)
    not_evaluated = [c for c in pred_classes if c not in label_classes]
    return chosen, not_evaluated


def align_ids(pred_ids, label_ids, pred_path, labels_path) -> np.ndarray:
    """Row of the predictions for each label row; any id mismatch or duplicate is a UserError."""
    pred_ids = pd.Index(pred_ids, dtype=str)
    label_ids = pd.Index(label_ids, dtype=str)
    for ids, path in ((label_ids, labels_path), (pred_ids, pred_path)):
        dup = ids[ids.duplicated()].unique()
        if len(dup):
            raise UserError(f"{path}: {len(dup)} duplicate dicom_id(s): {_quote(dup)}")
    missing = label_ids.difference(pred_ids, sort=False)
    if len(missing):
        raise UserError(f"{pred_path}: {len(missing)} dicom_id(s) of {labels_path} have no prediction: "
                        f"{_quote(missing)}")
    extra = pred_ids.difference(label_ids, sort=False)
    if len(extra):
        raise UserError(f"{pred_path}: {len(extra)} dicom_id(s) are not in {labels_path}: {_quote(extra)}")
    return pred_ids.get_indexer(label_ids)


def _check_studies(pred_studies: np.ndarray, label_studies: np.ndarray, dicom_ids, pred_path, labels_path):
    differ = np.flatnonzero(pred_studies != label_studies)
    if differ.size:
        first = differ[0]
        raise UserError(f"{pred_path}: {differ.size} image(s) have another study_id than in {labels_path}, "
                        f"e.g. dicom_id {dicom_ids[first]}: {pred_studies[first]} vs {label_studies[first]}")


def load_evaluation(pred_path, labels_path, requested: list[str] | None, policy,
                    option: str = "given in --classes") -> Evaluation:
    """Read both files, check they describe the same images and classes, return aligned arrays.

    ``option`` ends the message when a ``requested`` class is missing from a file.
    """
    from .data.cxr_lt import read_cxr_lt

    ids, pred_classes, probs = read_predictions(pred_path)
    table = read_cxr_lt(labels_path, require_labels=True)
    label_classes = list(table.classes)
    classes, not_evaluated = choose_classes(requested, pred_classes, label_classes, pred_path, labels_path,
                                            option)
    if len(table.frame) == 0:
        raise UserError(f"{labels_path}: no rows to evaluate")
    label_ids = table.frame["dicom_id"].astype(str).to_numpy()
    rows = align_ids(ids["dicom_id"], label_ids, pred_path, labels_path)
    _check_studies(ids["study_id"].to_numpy()[rows].astype(str), table.frame["study_id"].astype(str).to_numpy(),
                   label_ids, pred_path, labels_path)

    targets, mask = table.targets(policy)
    label_cols = [label_classes.index(c) for c in classes]
    pred_cols = [pred_classes.index(c) for c in classes]
    y_true = np.asarray(targets, dtype=np.float64)[:, label_cols]
    valid = np.ones_like(y_true, dtype=bool) if mask is None else np.asarray(mask)[:, label_cols] != 0
    return Evaluation(classes, y_true, probs[rows][:, pred_cols], valid, not_evaluated,
                      table.frame["study_id"].astype(str).to_numpy())


def training_prevalence(train_path, classes: list[str], policy) -> tuple[np.ndarray, list[str]]:
    """Prevalence per class in the training CSV; classes it lacks count as 0 (never seen: tail)."""
    from .data.cxr_lt import read_cxr_lt

    train = read_cxr_lt(train_path, require_labels=True)
    prevalence = np.asarray(train.prevalence(policy), dtype=np.float64)
    index = {c: k for k, c in enumerate(train.classes)}
    absent = [c for c in classes if c not in index]
    return np.array([prevalence[index[c]] if c in index else 0.0 for c in classes]), absent


def validation_thresholds(evaluation: Evaluation, val_pred, val_labels, policy, fallback: float) -> dict:
    """Per-class F1-optimal thresholds chosen on the validation files, and the test metrics at them.

    Returns ``{"val_pred", "val_labels", "rule", "fallback_threshold", "fallback_classes",
    "thresholds": {class: t}, micro_F1, mF1, macro_precision, macro_recall, mFNR,
    exact_match, "per_class": {class: {precision, recall, F1, FNR}}}``.
    """
    if (val_pred is None) != (val_labels is None):
        given, needed = ("--val-pred", "--val-labels") if val_labels is None else ("--val-labels", "--val-pred")
        raise UserError(f"{given} needs {needed} (the thresholds are chosen on labelled validation predictions)")
    val = load_evaluation(val_pred, val_labels, evaluation.classes, policy, option="(an evaluated class)")
    thresholds, fell_back = choose_f1_thresholds(val.y_true, val.y_prob, val.valid, val.classes, fallback)
    at_thresholds = decision_metrics(evaluation.y_true, evaluation.y_prob, evaluation.valid, evaluation.classes,
                                     thresholds)
    return {"val_pred": str(val_pred), "val_labels": str(val_labels),
            "rule": "per class, the probability maximising F1 on the validation predictions",
            "fallback_threshold": float(fallback), "fallback_classes": fell_back,
            "thresholds": dict(zip(evaluation.classes, thresholds.tolist())),
            **{key: at_thresholds[key] for key in DECISION_KEYS}, "per_class": at_thresholds["per_class"]}


def _note(message: str) -> None:
    print(f"chexfusion: note: {message}", file=sys.stderr)


def run(args) -> int:
    from .data.labels import LabelPolicy

    policy = LabelPolicy(uncertain=args.label_policy_uncertain)
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.out:
        check_output_folder(args.out)
    if args.task:
        if args.classes:
            raise UserError("--classes does not go with --task: a task scores its own classes")
        evaluation = load_task_evaluation(args.pred, args.labels, TASKS[args.task], policy)
    else:
        evaluation = load_evaluation(args.pred, args.labels, _split_names(args.classes, "--classes"), policy)
    notes = []
    if evaluation.not_evaluated:
        notes.append(f"Not evaluated (no label column in {args.labels}): {', '.join(evaluation.not_evaluated)}.")
    metrics = score(evaluation, args, policy, notes)
    sources = {"predictions": str(args.pred), "labels": str(args.labels),
               "train_labels": str(args.train_labels) if args.train_labels else None,
               "label_policy_uncertain": args.label_policy_uncertain}
    metrics["not_evaluated"] = evaluation.not_evaluated
    metrics["sources"] = sources
    pr_classes = _curve_classes(metrics, _split_names(args.pr_classes, "--pr-classes"), notes)
    for note in notes:
        _note(note)
    written = _write_outputs(Path(args.out), metrics, evaluation, pr_classes, sources, notes) if args.out else None
    from .report import summary_table

    print(summary_table(metrics))
    if written:
        print(written)
    return 0


def score(evaluation: Evaluation, args, policy, notes: list[str]) -> dict:
    """The metrics of ``evaluate``'s arguments: at the threshold, at validation-chosen thresholds when asked, with
    bootstrap intervals when asked; appends what a reader must know to ``notes``."""
    train_prevalence = None
    if args.train_labels:
        train_prevalence, absent = training_prevalence(args.train_labels, evaluation.classes, policy)
        if absent:
            notes.append(f"Not in {args.train_labels}, so training prevalence 0 (tail): {', '.join(absent)}.")
    options = dict(train_prevalence=train_prevalence, threshold=args.threshold, ece_bins=args.ece_bins)
    metrics = compute_metrics(evaluation.y_true, evaluation.y_prob, evaluation.classes,
                              mask=evaluation.valid, **options)
    if args.val_pred is not None or args.val_labels is not None:
        metrics["val_thresholds"] = validation_thresholds(evaluation, args.val_pred, args.val_labels, policy,
                                                          args.threshold)
        if metrics["val_thresholds"]["fallback_classes"]:
            notes.append(f"No positive in {args.val_labels}, so threshold {args.threshold} kept: "
                         f"{', '.join(metrics['val_thresholds']['fallback_classes'])}.")
    if args.bootstrap:
        metrics["bootstrap"] = bootstrap_intervals(evaluation.y_true, evaluation.y_prob, evaluation.classes,
                                                   n=args.bootstrap, seed=args.seed, mask=evaluation.valid,
                                                   study_ids=evaluation.study_ids, **options)
    return metrics


def _curve_classes(metrics: dict, requested: list[str] | None, notes: list[str]) -> list[str] | None:
    """The --pr-classes that get a precision-recall curve: each must be evaluated; one without a positive label
    has no curve, which ``notes`` says."""
    if not requested:
        return requested
    for name in requested:
        if name not in metrics["per_class"]:
            raise UserError(f"--pr-classes: class '{name}' is not among the evaluated classes")
    undefined = [c for c in requested if metrics["per_class"][c]["AP"] is None]
    if undefined:
        notes.append(f"No precision-recall curve (no positive label): {', '.join(undefined)}.")
    return [c for c in requested if c not in undefined]


def _write_outputs(out: Path, metrics: dict, evaluation: Evaluation, pr_classes, sources: dict,
                   notes: list[str]) -> str:
    """metrics.json, per_class.csv, the plots and the report in ``out``; returns the line that says so."""
    from .report import default_pr_classes, write_report

    chosen = pr_classes if pr_classes is not None else default_pr_classes(metrics)
    atomic_write_json(out / "metrics.json", json_safe(metrics))
    paths = write_report(out, metrics, evaluation, chosen, {k: v for k, v in sources.items() if v is not None}, notes)
    return f"wrote {out / 'metrics.json'}, {paths['per_class_csv']}, plots and {paths['report']}"
