"""The last line of ``make zero-shot-vlm``: each method's held-out classes scored by name, as one JSON object.

``python -m chexfusion.clip.summary --method NAME=HELD_OUT_DIR,RUN_DIR ...`` reads, per method, the
``per_class.csv`` that ``chexfusion evaluate --classes HELD-OUT`` wrote in ``HELD_OUT_DIR`` (each held-out class's
AP, its chance AP and AUROC on the independent cohort) and the run's own ``metrics.json`` (its test mAP over the
classes it was trained on: the base classes), prints a table, and last one line
``{"methods": {NAME: {"ap_over_chance": {...}, "mean_ap_over_chance": x, "auroc": {...}, "base_mAP": y}}}``.

Over seeds (``make zero-shot-vlm-seeds``): ``--seeds 0,1,2`` with ``{seed}`` in the paths reads every seed's
runs and adds ``"seeds"``: per method each figure's mean and sample standard deviation over the seeds, and per
method against each one before it (``--method`` order: ``"B - A"``) the paired difference of each figure, seed by
seed, with its mean, standard deviation and ``"sign"``: ``higher`` or ``lower`` when every seed agrees, ``equal``
when no seed differs, else ``mixed``. Three seeds cannot make a difference significant (a sign test's smallest p
is 0.25); the sign only says whether the seeds agree, and the spread says by how much they vary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from itertools import combinations
from pathlib import Path

from ..errors import EXIT_USER_ERROR, UserError


def method_summary(held_out_dir: Path, run_dir: Path) -> dict:
    """One method's figures (see the module docstring); a missing or malformed file is a one-line error."""
    import pandas as pd

    per_class_path, metrics_path = Path(held_out_dir) / "per_class.csv", Path(run_dir) / "metrics.json"
    for path in (per_class_path, metrics_path):
        if not path.is_file():
            raise UserError(f"{path}: not found (run the method's training and evaluate first)")
    table = pd.read_csv(per_class_path)
    missing = [c for c in ("class", "AP", "chance_AP", "AUROC") if c not in table.columns]
    if missing:
        raise UserError(f"{per_class_path}: no column '{missing[0]}' (not evaluate's per_class.csv)")
    ratios = {str(r["class"]): float(r["AP"]) / float(r["chance_AP"]) for _, r in table.iterrows()}
    test = json.loads(metrics_path.read_text()).get("test") or {}
    return {"ap_over_chance": {k: round(v, 3) for k, v in ratios.items()},
            "mean_ap_over_chance": round(sum(ratios.values()) / len(ratios), 3) if ratios else None,
            "auroc": {str(r["class"]): round(float(r["AUROC"]), 3) for _, r in table.iterrows()},
            "base_mAP": None if test.get("mAP") is None else round(float(test["mAP"]), 3)}


def parse_method(text: str) -> tuple[str, Path, Path]:
    name, sep, paths = text.partition("=")
    held_out, comma, run = paths.partition(",")
    if not (sep and comma and name and held_out and run):
        raise UserError(f"--method {text!r}: give NAME=HELD_OUT_DIR,RUN_DIR")
    return name, Path(held_out), Path(run)


def flat_figures(summary: dict) -> dict[str, float]:
    """A method's figures as ``name -> value`` (``ap_over_chance/CLASS``, ``auroc/CLASS``, ``mean_ap_over_chance``,
    ``base_mAP``), the unit that is averaged and differenced over seeds."""
    flat = {f"{group}/{c}": v for group in ("ap_over_chance", "auroc") for c, v in summary[group].items()}
    flat.update({k: summary[k] for k in ("mean_ap_over_chance", "base_mAP") if summary[k] is not None})
    return flat


def _mean_sd(values: list[float]) -> dict:
    """Mean and sample standard deviation (``--seeds`` takes two or more)."""
    return {"mean": round(statistics.fmean(values), 3), "sd": round(statistics.stdev(values), 3),
            "values": [round(v, 3) for v in values]}


def _sign(differences: list[float]) -> str:
    if all(abs(d) < 5e-4 for d in differences):  # equal at the 3 decimals reported
        return "equal"
    return "higher" if min(differences) > 0 else "lower" if max(differences) < 0 else "mixed"


def over_seeds(per_seed: dict[int, dict[str, dict]]) -> dict:
    """``per_seed[seed][method]`` summaries -> each method's figures over seeds, and each against each earlier one."""
    seeds = sorted(per_seed)
    names = list(per_seed[seeds[0]])
    flat = {m: [flat_figures(per_seed[s][m]) for s in seeds] for m in names}
    out = {"seeds": seeds, "methods": {}, "against": {}}
    for m in names:
        keys = [k for k in flat[m][0] if all(k in f for f in flat[m])]
        out["methods"][m] = {k: _mean_sd([f[k] for f in flat[m]]) for k in keys}
    for reference, m in combinations(names, 2):
        keys = [k for k in flat[m][0] if all(k in f for f in flat[m] + flat[reference])]
        diffs = {k: [a[k] - b[k] for a, b in zip(flat[m], flat[reference])] for k in keys}
        out["against"][f"{m} - {reference}"] = {k: {**_mean_sd(d), "sign": _sign(d)} for k, d in diffs.items()}
    return out


def with_seed(path: Path, seed: int | None) -> Path:
    return path if seed is None else Path(str(path).replace("{seed}", str(seed)))


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: give at least two different seeds")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chexfusion.clip.summary", description=__doc__.split("\n")[0])
    parser.add_argument("--method", action="append", required=True, metavar="NAME=HELD_OUT_DIR,RUN_DIR")
    parser.add_argument("--seeds", help="comma-separated seeds; the paths hold {seed} (see the module docstring)")
    args = parser.parse_args(argv)
    try:
        parsed = [parse_method(text) for text in args.method]
        seeds = parse_seeds(args.seeds) if args.seeds else [None]
        per_seed = {}
        for seed in seeds:
            per_seed[seed] = {name: method_summary(with_seed(held, seed), with_seed(run, seed))
                              for name, held, run in parsed}
    except UserError as exc:
        print(f"chexfusion: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    for seed, methods in per_seed.items():
        for name, figures in methods.items():
            ratios = ", ".join(f"{c} {v:.1f}x" for c, v in figures["ap_over_chance"].items())
            print(("" if seed is None else f"seed {seed}: ") + f"{name:14s} held out (AP / chance): {ratios}; "
                  f"mean {figures['mean_ap_over_chance']}; base-class test mAP {figures['base_mAP']}")
    if args.seeds is None:
        print(json.dumps({"methods": per_seed[None]}))
        return 0
    summary = over_seeds(per_seed)
    for pair, figures in summary["against"].items():
        for key in ("mean_ap_over_chance", "base_mAP"):
            if key in figures:
                f = figures[key]
                print(f"{pair}: {key} {f['mean']:+.3f} +- {f['sd']:.3f} over seeds {seeds} ({f['sign']})")
    print(json.dumps({"methods": {str(s): m for s, m in per_seed.items()}, "seeds": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
