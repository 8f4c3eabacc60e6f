"""``chexfusion compare``: is one model better than another on the same test images, and how sure is that?

A table of two mAPs says nothing about whether the gap is larger than what a
different draw of test studies would give. For each model after the first (the
reference) this command tests the difference to the reference, on exactly the
same images:

- AUROC of every class and mAUROC: DeLong's paired test, with images clustered
  in studies (:mod:`chexfusion.delong`); the per-class p-values are corrected
  for testing many classes (Holm by default, or Bonferroni);
- mAP and head / medium / tail mAP: a paired bootstrap that resamples studies
  and scores every model on the same replicates (:mod:`chexfusion.paired_bootstrap`);

and, over all models, the distribution of their mAP rank across the same
replicates (ranking stability, as in the CXR-LT 2023 overview). Every predictions
file is checked against ``--labels`` like in ``evaluate`` (same images, same
studies, every label class present). Prints a Markdown table; ``--out`` also
writes ``compare.md`` and ``compare.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .data.classes import prevalence_group
from .delong import delong_test, mean_auc_test
from .errors import UserError
from .evaluate import UNCERTAIN_POLICIES, load_evaluation, training_prevalence
from .io import atomic_write_json, atomic_write_text, check_output_folder
from .metrics import class_prevalence, json_safe
from .paired_bootstrap import (
    MAP_KEYS,
    adjust_p_values,
    bootstrap_maps,
    class_aps,
    map_summary,
    paired_difference,
    rank_distribution,
)

CORRECTIONS = ("holm", "bonferroni")
UNITS = ("study", "image")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", action="append", required=True, metavar="PRED.csv",
                        help="a predictions CSV; give it twice or more (the first is the reference)")
    parser.add_argument("--labels", required=True, help="CXR-LT CSV with the true labels of the same images")
    parser.add_argument("--train-labels", help="training CSV; its prevalence defines head/medium/tail "
                        "(default: the prevalence in --labels)")
    parser.add_argument("--names", metavar="A,B", help="model names, one per --pred (default: the file names)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="paired bootstrap resamples for the mAP tests and the ranking (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--correction", choices=CORRECTIONS, default="holm",
                        help="family-wise correction of the per-class p-values (default holm)")
    parser.add_argument("--unit", choices=UNITS, default="study",
                        help="independent unit for the bootstrap and DeLong's variance (default study)")
    parser.add_argument("--classes", nargs="+", metavar="CLASS", help="compare only these classes")
    parser.add_argument("--label-policy-uncertain", choices=UNCERTAIN_POLICIES, default="zero",
                        help="how an uncertain (-1) label counts (default zero; ignore leaves it out)")
    parser.add_argument("--out", help="folder for compare.md and compare.json (default: print only)")


def model_names(paths: list[str], names: str | None) -> list[str]:
    """One distinct name per predictions file: ``--names`` or the file names (with their folder if they clash)."""
    if names is not None:
        from .name_lists import parse_name_list

        chosen = parse_name_list(names, "--names")
        if len(chosen) != len(paths):
            raise UserError(f"--names: {len(chosen)} names for {len(paths)} --pred files")
        return chosen
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    full = [str(p) for p in paths]
    if len(set(full)) != len(full):
        raise UserError(f"--pred: '{next(p for p in full if full.count(p) > 1)}' given twice")
    return full


def class_groups(evaluation, train_labels, policy) -> tuple[list[str | None], str]:
    """Head / medium / tail of each evaluated class, from the training CSV when given (like ``evaluate``)."""
    if train_labels:
        prevalence, _ = training_prevalence(train_labels, evaluation.classes, policy)
        source = "train"
    else:
        prevalence, source = class_prevalence(evaluation.y_true, evaluation.valid), "eval"
    return [None if np.isnan(p) else prevalence_group(float(p)) for p in prevalence], source


def per_class_delong(reference, other, groups, clusters, correction: str) -> dict:
    """DeLong's test of every class (reference - other), with corrected p-values."""
    out = {}
    for k, name in enumerate(reference.classes):
        keep = reference.valid[:, k]
        labels = reference.y_true[keep, k]
        entry = {"group": groups[k], "n_pos": int(labels.sum())}
        if 0 < labels.sum() < labels.size:
            entry.update(delong_test(labels, reference.y_prob[keep, k], other.y_prob[keep, k],
                                     None if clusters is None else clusters[keep]))
        out[name] = entry
    adjusted = adjust_p_values([e.get("p") for e in out.values()], correction)
    for entry, p in zip(out.values(), adjusted):
        entry["p_adjusted"] = p
    return out


def compare_pair(index: int, evaluations, points, replicates, groups, clusters, correction: str) -> dict:
    """Every test of model ``index`` against the reference (model 0)."""
    reference, other = evaluations[0], evaluations[index]
    maps = {key: paired_difference(points[key][0], points[key][index], replicates[key][:, 0],
                                   replicates[key][:, index]) for key in MAP_KEYS}
    mauc = mean_auc_test(reference.y_true, reference.y_prob, other.y_prob, reference.valid, clusters)
    return {"maps": maps, "mAUROC": mauc,
            "per_class": per_class_delong(reference, other, groups, clusters, correction)}


def run(args) -> int:
    from .compare_report import markdown
    from .data.labels import LabelPolicy

    if len(args.pred) < 2:
        raise UserError("--pred: give at least two predictions files to compare")
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    if args.out:
        check_output_folder(args.out)
    names = model_names(args.pred, args.names)
    policy = LabelPolicy(uncertain=args.label_policy_uncertain)
    requested = None
    if args.classes:
        from .name_lists import parse_name_list

        requested = parse_name_list(args.classes, "--classes")
    evaluations = [load_evaluation(path, args.labels, requested, policy) for path in args.pred]
    reference = evaluations[0]
    groups, source = class_groups(reference, args.train_labels, policy)
    clusters = reference.study_ids if args.unit == "study" else None

    points = {key: [] for key in MAP_KEYS}
    for evaluation in evaluations:
        summary = map_summary(class_aps(evaluation.y_true, evaluation.y_prob, evaluation.valid), groups)
        for key in MAP_KEYS:
            points[key].append(summary[key])
    replicates = bootstrap_maps(reference.y_true, [e.y_prob for e in evaluations], reference.valid, groups,
                                clusters, args.bootstrap, args.seed, progress=True)
    result = {
        "models": [{"name": n, "pred": str(p)} for n, p in zip(names, args.pred)],
        "labels": str(args.labels), "train_labels": args.train_labels, "prevalence_source": source,
        "classes": reference.classes, "n_images": len(reference.y_true),
        "n_studies": len(set(reference.study_ids)), "unit": args.unit, "correction": args.correction,
        "bootstrap": {"n": args.bootstrap, "seed": args.seed, "level": 0.95},
        "pairs": [{"reference": names[0], "model": names[i],
                   **compare_pair(i, evaluations, points, replicates, groups, clusters, args.correction)}
                  for i in range(1, len(evaluations))],
        "ranking": {"metric": "mAP", "models": names, "mAP": points["mAP"],
                    **rank_distribution(np.asarray(points["mAP"]), replicates["mAP"])},
    }
    text = markdown(result)
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder")
        atomic_write_json(out / "compare.json", json_safe(result))
        atomic_write_text(out / "compare.md", text)
    print(text, end="")
    if args.out:
        print(f"wrote {out / 'compare.md'} and {out / 'compare.json'}")
    return 0
