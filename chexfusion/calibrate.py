"""``chexfusion calibrate``: fit a run's per-class temperatures on the validation split and store them in the run.

The run is scored from raw images exactly as ``chexfusion predict`` scores
them (same predictor, no calibration), so the temperatures fit what predict,
the web demo and the API will scale. mAP, mAUROC and mECE before and after go
into ``calibration.json`` and are printed, for validation and, when the run's
config has one, test.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a stage-1 or stage-2 run folder")
    parser.add_argument("--csv", help="labelled CSV to fit on (default: the run's data.val_csv)")
    parser.add_argument("--image-root", help="folder its fpath values are relative to (default: data.image_root)")
    parser.add_argument("--test-csv", help="labelled CSV to report on (default: the run's data.test_csv, if any)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per backbone batch (default 32)")
    parser.add_argument("--refit", action="store_true", help="fit again when the run is calibrated already")


def calibrate_run(run_dir, csv=None, image_root=None, test_csv=None, batch_size: int = 32) -> dict:
    """Fit, store and report; returns what ``calibration.json`` holds besides the temperatures."""
    import numpy as np

    from .api import load
    from .calibration import Calibration, scale
    from .data.cxr_lt import read_cxr_lt
    from .data.labels import LabelPolicy
    from .inference import TableOptions
    from .metrics import compute_metrics

    model = load(run_dir, calibrated=False)
    cfg = model.predictor.run.config.data
    csv, image_root = csv or cfg.val_csv, image_root or cfg.image_root
    test_csv = test_csv or getattr(cfg, "test_csv", None)
    policy = LabelPolicy(uncertain=cfg.uncertain_label, blank=cfg.blank_label)
    views = getattr(cfg, "views", "all")  # a per-view stage-1 run is fitted and judged on its own view

    def scored(path):
        table = read_cxr_lt(path, classes=model.classes, require_labels=True)
        if views != "all":
            table = table.select(np.flatnonzero(table.frame["view"].to_numpy() == views))
        df = model.predict_table(table, image_root, options=TableOptions(batch_size=batch_size))
        targets, mask = table.targets(policy)
        return df[model.classes].to_numpy(), targets, mask

    probs, targets, mask = scored(csv)
    fit = Calibration.fit(probs, targets, mask, model.classes, fitted_on=str(csv))
    report = {}
    for name, path in (("validation", csv), ("test", test_csv)):
        if not path:
            continue
        p, y, m = (probs, targets, mask) if name == "validation" else scored(path)
        before = compute_metrics(y, p, model.classes, mask=m)
        after = compute_metrics(y, scale(p, fit.for_classes(model.classes)), model.classes, mask=m)
        report[name] = {f"{k}_{when}": res[k] for k in ("mAP", "mAUROC", "mECE")
                        for when, res in (("raw", before), ("calibrated", after))}
    fit.save(Path(run_dir), report)
    return report


def run(args) -> int:
    from .errors import UserError

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    stored = Path(args.model) / "calibration.json"
    if stored.is_file() and not args.refit:
        import json

        report = {k: v for k, v in json.loads(stored.read_text()).items() if k in ("validation", "test")}
        print(f"{args.model} is calibrated already ({stored}; --refit to fit again)")
    else:
        from .io import check_output_folder

        check_output_folder(args.model, "--model")  # calibration.json is written into the run folder
        report = calibrate_run(args.model, args.csv, args.image_root, args.test_csv, args.batch_size)
    for split, r in report.items():
        print(f"calibrated {args.model} ({split}): mECE {r['mECE_raw']:.3f} -> {r['mECE_calibrated']:.3f}  "
              f"mAP {r['mAP_raw']:.3f} -> {r['mAP_calibrated']:.3f}  mAUROC {r['mAUROC_raw']:.3f} -> "
              f"{r['mAUROC_calibrated']:.3f}")
    return 0
