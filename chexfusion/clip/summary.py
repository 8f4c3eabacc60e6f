"""The last line of ``make zero-shot-vlm``: each method's held-out classes scored by name, as one JSON object.

``python -m chexfusion.clip.summary --method NAME=HELD_OUT_DIR,RUN_DIR ...`` reads, per method, the
``per_class.csv`` that ``chexfusion evaluate --classes HELD-OUT`` wrote in ``HELD_OUT_DIR`` (each held-out class's
AP, its chance AP and AUROC on the independent cohort) and the run's own ``metrics.json`` (its test mAP over the
classes it was trained on: the base classes), prints a table, and last one line
``{"methods": {NAME: {"ap_over_chance": {...}, "mean_ap_over_chance": x, "auroc": {...}, "base_mAP": y}}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chexfusion.clip.summary", description=__doc__.split("\n")[0])
    parser.add_argument("--method", action="append", required=True, metavar="NAME=HELD_OUT_DIR,RUN_DIR")
    args = parser.parse_args(argv)
    try:
        methods = {}
        for text in args.method:
            name, held_out, run = parse_method(text)
            methods[name] = method_summary(held_out, run)
    except UserError as exc:
        print(f"chexfusion: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    for name, figures in methods.items():
        ratios = ", ".join(f"{c} {v:.1f}x" for c, v in figures["ap_over_chance"].items())
        print(f"{name:14s} held out (AP / chance): {ratios}; mean {figures['mean_ap_over_chance']}; "
              f"base-class test mAP {figures['base_mAP']}")
    print(json.dumps({"methods": methods}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
