"""What ``chexfusion evaluate`` shows: the summary table, per-class CSV, PNG plots and a Markdown report.

Plots are drawn on a bare matplotlib ``Figure`` with the Agg canvas, so nothing
here depends on (or changes) pyplot's global backend, and it works headless.
Every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .decision_metrics import DECISION_KEYS
from .io import atomic_path, atomic_write_text
from .metrics import GROUPS, HEADLINE_KEYS, calibration_bins

GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728", None: "#7f7f7f"}
PER_CLASS_COLUMNS = ("AP", "chance_AP", "AUROC", "F1", "precision", "recall", "FNR", "ECE", "n_pos", "n_valid",
                     "prevalence", "group")
VAL_COLUMNS = ("threshold", "F1", "FNR")  # per class at the validation-chosen threshold, as val_<name> in the CSV
DECISION_LABELS = {"micro_F1": "micro-F1", "mF1": "macro-F1 (mF1)", "macro_precision": "macro precision",
                   "macro_recall": "macro recall", "mFNR": "mean false-negative rate", "exact_match": "exact match"}
PLOT_FILES = {
    "per_class_ap": "per_class_ap.png",
    "pr_curves": "pr_curves.png",
    "reliability": "reliability.png",
}


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(metrics: dict) -> str:
    """The short human summary printed on stdout, one metric a line, with intervals when bootstrapped."""
    intervals = (metrics.get("bootstrap") or {}).get("intervals", {})
    lines = []
    for key in HEADLINE_KEYS:
        ci = intervals.get(key)
        suffix = f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        lines.append(f"{key:<12}{_fmt(metrics[key]):>8}{suffix}")
    if metrics.get("chance_mAP") is not None:  # absent from metrics.json files of older versions
        lines.append(f"{'chance mAP':<12}{_fmt(metrics['chance_mAP']):>8}  (mean prevalence of the scored classes)")
    lines.append(f"at probability >= {metrics['threshold']}: "
                 + ", ".join(f"{key} {_fmt(metrics[key])}" for key in DECISION_KEYS if key != "mF1"))
    tuned = metrics.get("val_thresholds")
    if tuned:
        lines.append("at validation-chosen thresholds: "
                     + ", ".join(f"{key} {_fmt(tuned[key])}" for key in DECISION_KEYS))
    lines.append(f"ECE binning: {metrics['ece_bins']} {metrics['ece_binning']} bins over [0, 1]")
    lines.append(f"{'n images':<12}{metrics['n_images']:>8}")
    lines.append(f"{'n classes':<12}{metrics['n_classes_scored']:>8} scored of {metrics['n_classes']}")
    if metrics["undefined_classes"]:
        lines.append(f"undefined (no positives or no negatives): {', '.join(metrics['undefined_classes'])}")
    return "\n".join(lines)


def per_class_frame(metrics: dict) -> pd.DataFrame:
    """One row per class, in evaluation order, with the per-class metrics."""
    tuned = metrics.get("val_thresholds")
    rows = []
    for name, values in metrics["per_class"].items():
        row = {"class": name, **{c: values.get(c) for c in PER_CLASS_COLUMNS}}
        if tuned:
            row.update({f"val_{key}": _tuned_value(tuned, name, key) for key in VAL_COLUMNS})
        rows.append(row)
    extra = [f"val_{key}" for key in VAL_COLUMNS] if tuned else []
    return pd.DataFrame(rows, columns=["class", *PER_CLASS_COLUMNS, *extra])


def _tuned_value(tuned: dict, name: str, key: str):
    return tuned["thresholds"][name] if key == "threshold" else tuned["per_class"][name][key]


def write_per_class_csv(metrics: dict, path) -> None:
    with atomic_path(path) as tmp:
        per_class_frame(metrics).to_csv(tmp, index=False)


def _order_by_prevalence(metrics: dict) -> list[str]:
    per_class = metrics["per_class"]
    return sorted(per_class, key=lambda c: -(per_class[c]["prevalence"] or 0.0))


def default_pr_classes(metrics: dict, per_group: int = 2) -> list[str]:
    """A few classes from each group for the PR plot: the most and least prevalent scorable ones."""
    chosen = []
    for group in GROUPS:
        members = [c for c in _order_by_prevalence(metrics)
                   if metrics["per_class"][c]["group"] == group and metrics["per_class"][c]["AP"] is not None]
        picks = members[:1] + members[1:][-(per_group - 1):] if per_group > 1 else members[:1]
        chosen.extend(picks)
    return chosen


def _save(figure, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def plot_per_class_ap(metrics: dict, path) -> None:
    """Bar per class, sorted by (training) prevalence, coloured head/medium/tail; undefined classes marked n/a."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    order = _order_by_prevalence(metrics)
    per_class = metrics["per_class"]
    ap = [per_class[c]["AP"] for c in order]
    figure = Figure(figsize=(max(6.0, 0.28 * len(order) + 2.0), 4.5))
    axes = figure.add_subplot()
    x = np.arange(len(order))
    axes.bar(x, [v if v is not None else 0.0 for v in ap],
             color=[GROUP_COLOURS[per_class[c]["group"]] for c in order])
    for i, value in enumerate(ap):
        if value is None:
            axes.text(i, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="#555555")
    axes.set_xticks(x, order, rotation=90, fontsize=8)
    axes.set_xlim(-0.6, len(order) - 0.4)
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel("average precision")
    source = "training" if metrics.get("prevalence_source") == "train" else "evaluation-set"
    axes.set_title(f"Per-class AP, sorted by {source} prevalence (mAP {_fmt(metrics['mAP'], 3)})")
    axes.legend(handles=[Patch(color=GROUP_COLOURS[g], label=g) for g in GROUPS],
                loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(figure, path)


def plot_pr_curves(y_true, y_prob, valid, classes: list[str], chosen: list[str], metrics: dict, path) -> None:
    """Precision-recall curves (sklearn) of the chosen classes, labelled with their AP and group."""
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve

    figure = Figure(figsize=(6.5, 5.0))
    axes = figure.add_subplot()
    index = {c: k for k, c in enumerate(classes)}
    for name in chosen:
        k = index[name]
        keep = valid[:, k]
        precision, recall, _ = precision_recall_curve(y_true[keep, k], y_prob[keep, k])
        info = metrics["per_class"][name]
        axes.step(recall, precision, where="post",
                  label=f"{name} ({info['group']}, AP {_fmt(info['AP'], 3)})")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("Precision-recall")
    if chosen:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(figure, path)


def plot_reliability(y_true, y_prob, valid, bins: int, metrics: dict, path) -> None:
    """Reliability diagram of all classes pooled, same equal-width bins as the ECE, with bin counts below."""
    from matplotlib.figure import Figure

    stats = calibration_bins(y_true[valid], y_prob[valid], bins)
    centres = (stats["edges"][:-1] + stats["edges"][1:]) / 2.0
    width = 1.0 / bins
    filled = stats["count"] > 0
    figure = Figure(figsize=(5.5, 6.5))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="#888888", label="perfect calibration")
    top.bar(centres[filled], stats["positive_rate"][filled], width=width * 0.9, color="#1f77b4",
            edgecolor="black", label="fraction positive")
    top.plot(stats["mean_prob"][filled], stats["positive_rate"][filled], "o", color="black", markersize=3,
             label="mean probability in bin")
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("fraction positive")
    top.set_title(f"Reliability, all classes pooled ({bins} bins; mECE {_fmt(metrics['mECE'], 3)})")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, stats["count"], width=width * 0.9, color="#7f7f7f")
    bottom.set_yscale("log" if stats["count"].max() > 0 else "linear")
    bottom.set_xlim(0.0, 1.0)
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("entries")
    _save(figure, path)


def _headline_rows(metrics: dict) -> list[str]:
    intervals = (metrics.get("bootstrap") or {}).get("intervals")
    if intervals is None:
        rows = ["| metric | value |", "|---|---|"]
        rows += [f"| {key} | {_fmt(metrics[key])} |" for key in HEADLINE_KEYS]
        pad = ""
    else:
        rows = ["| metric | value | 95% interval |", "|---|---|---|"]
        for key in HEADLINE_KEYS:
            ci = intervals.get(key)
            rows.append(f"| {key} | {_fmt(metrics[key])} | {f'{ci[0]:.4f} - {ci[1]:.4f}' if ci else 'n/a'} |")
        pad = " |"
    rows.append(f"| images | {metrics['n_images']} |{pad}")
    rows.append(f"| classes scored | {metrics['n_classes_scored']} of {metrics['n_classes']} |{pad}")
    return rows


def write_markdown(metrics: dict, path, sources: dict[str, str], notes: list[str]) -> None:
    """report.md: the headline table (with intervals), links to the plots and files, and the per-class table."""
    boot = metrics.get("bootstrap")
    source = "training" if metrics["prevalence_source"] == "train" else "evaluation-set"
    lines = ["# chexfusion evaluation", ""]
    lines += [f"- {name}: `{value}`" for name, value in sources.items()]
    lines += ["", "## Headline", "", *_headline_rows(metrics), ""]
    lines.append(f"F1 at probability >= {metrics['threshold']}; ECE with {metrics['ece_bins']} "
                 f"{metrics['ece_binning']} bins over [0, 1]; "
                 f"head / medium / tail = {source} prevalence > 10% / 1-10% / < 1%; "
                 "group_avg_mAP = mean of the three (the papers' Avg).")
    if boot:
        unit = "studies" if boot.get("unit") == "study" else "images"
        lines.append(f"Intervals: {boot['n']} bootstrap resamples of the {unit} (seed {boot['seed']}), "
                     "percentile method.")
    lines += ["", "## Decisions", "", *_decision_rows(metrics)]
    if metrics["undefined_classes"]:
        lines += ["", "Undefined (no positive or no negative label, left out of the means): "
                  + ", ".join(metrics["undefined_classes"]) + "."]
    for note in notes:
        lines += ["", note]
    lines += ["", "## Plots", "",
              f"![Per-class AP]({PLOT_FILES['per_class_ap']})", "",
              f"![Precision-recall curves]({PLOT_FILES['pr_curves']})", "",
              f"![Reliability diagram]({PLOT_FILES['reliability']})", "",
              "## Per class", "",
              "Also in [per_class.csv](per_class.csv) and [metrics.json](metrics.json).", "",
              *_per_class_rows(metrics)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _decision_rows(metrics: dict) -> list[str]:
    """The thresholded metrics at the F1 threshold and, when chosen, at the validation thresholds."""
    tuned = metrics.get("val_thresholds")
    head = f"| metric | at probability >= {metrics['threshold']} |"
    rows = [head + (" at validation-chosen thresholds |" if tuned else ""), "|---|---|" + ("---|" if tuned else "")]
    for key in DECISION_KEYS:
        rows.append(f"| {DECISION_LABELS[key]} | {_fmt(metrics[key])} |" + (f" {_fmt(tuned[key])} |" if tuned else ""))
    if tuned:
        rows += ["", f"Validation thresholds: {tuned['rule']} (`{tuned['val_pred']}` against `{tuned['val_labels']}`)"
                 + (f"; no validation positive, {tuned['fallback_threshold']} kept: "
                    + ", ".join(tuned["fallback_classes"]) if tuned["fallback_classes"] else "") + "."]
    return rows


def _per_class_rows(metrics: dict) -> list[str]:
    tuned = metrics.get("val_thresholds")
    extra = " val threshold | F1 at it | FNR at it |" if tuned else ""
    rows = ["| class | group | prevalence | positives | AP | AUROC | F1 | precision | recall | FNR | ECE |" + extra,
            "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if tuned else "")]
    for name in _order_by_prevalence(metrics):
        c = metrics["per_class"][name]
        row = (f"| {name} | {c['group'] or 'n/a'} | {_fmt(c['prevalence'])} | {c['n_pos']} | {_fmt(c['AP'])} "
               f"| {_fmt(c['AUROC'])} | {_fmt(c['F1'])} | {_fmt(c['precision'])} | {_fmt(c['recall'])} "
               f"| {_fmt(c['FNR'])} | {_fmt(c['ECE'])} |")
        if tuned:
            row += "".join(f" {_fmt(_tuned_value(tuned, name, key))} |" for key in VAL_COLUMNS)
        rows.append(row)
    return rows


def write_report(out_dir, metrics: dict, evaluation, pr_classes: list[str], sources: dict[str, str],
                 notes: list[str]) -> dict[str, Path]:
    """All plots, per_class.csv and report.md under ``out_dir``; returns the paths written.

    ``evaluation`` holds the evaluated arrays the curves are drawn from: ``classes``, ``y_true``, ``y_prob`` and
    ``valid`` (:class:`chexfusion.evaluate.Evaluation`).
    """
    out_dir = Path(out_dir)
    y_true, y_prob, valid, classes = evaluation.y_true, evaluation.y_prob, evaluation.valid, evaluation.classes
    paths = {name: out_dir / file for name, file in PLOT_FILES.items()}
    paths["per_class_csv"] = out_dir / "per_class.csv"
    paths["report"] = out_dir / "report.md"
    write_per_class_csv(metrics, paths["per_class_csv"])
    plot_per_class_ap(metrics, paths["per_class_ap"])
    plot_pr_curves(y_true, y_prob, valid, classes, pr_classes, metrics, paths["pr_curves"])
    plot_reliability(y_true, y_prob, valid, metrics["ece_bins"], metrics, paths["reliability"])
    write_markdown(metrics, paths["report"], sources, notes)
    return paths
