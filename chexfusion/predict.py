"""``chexfusion predict``: study-level batch inference from raw images into a CXR-LT predictions CSV."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a stage-2 run folder (or a stage-1 run folder)")
    parser.add_argument("--csv", required=True, help="CXR-LT style CSV: dicom_id, study_id, fpath (labels not needed)")
    parser.add_argument("--image-root", required=True, help="folder the CSV's fpath values are relative to")
    parser.add_argument("--out", required=True, help="predictions CSV to write")
    parser.add_argument("--batch-size", type=int, default=32, help="images per backbone batch (default 32)")
    parser.add_argument("--tta", nargs="?", const="flip", default="", metavar="VIEWS",
                        help="average with test-time views: --tta alone is the horizontal flip; or a comma list of "
                             "flip, scale:S, shift:F (e.g. flip,scale:0.9,shift:0.05)")
    parser.add_argument("--aggregate", choices=["max", "mean"], default=None,
                        help="stage-1 runs: give each image its study's max / mean probability")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip missing or unreadable images (counted and reported; their rows are absent)")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="raw probabilities, without the run's temperature scaling (chexfusion calibrate)")
    parser.add_argument("--normal-gating", type=float, default=0.0, metavar="ALPHA",
                        help="scale every class but Normal by (1 - p_Normal)^ALPHA (the CXR-LT 2026 winner's normal "
                             "gating; default 0: off)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    from .submission import SUBMISSIONS

    parser.add_argument("--submission", choices=sorted(SUBMISSIONS), default=None,
                        help="write the CXR-LT 2026 server's CSV instead: ImageID, then the task's classes in the "
                             "official order (task 2's unseen classes need a text-query run)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--classes", metavar="A,B", help="score these class names instead of the run's own "
                       "(comma-separated; names it never saw are scored zero-shot: runs with model.queries=text)")
    names.add_argument("--classes-file", metavar="FILE", help="as --classes, one name per line ('#' comments)")


def requested_classes(args) -> list[str] | None:
    """The names of --classes / --classes-file, checked: none empty, none twice."""
    from .errors import UserError
    from .name_lists import check_distinct, parse_name_list

    if args.classes is not None:
        return parse_name_list(args.classes, "--classes")
    if args.classes_file is not None:
        try:
            lines = open(args.classes_file, encoding="utf-8").read().splitlines()
        except OSError as exc:
            raise UserError(f"--classes-file {args.classes_file}: {exc.strerror}") from None
        names = [line.split("#", 1)[0].strip() for line in lines]
        return check_distinct([name for name in names if name], args.classes_file)  # minus blank/comment lines
    return None


def submission_task(args) -> str | None:
    """The CXR-LT 2026 task of ``--submission`` (None without it); a submission covers every image."""
    from .errors import UserError
    from .submission import SUBMISSIONS

    if args.submission is None:
        return None
    if args.skip_bad_images:
        raise UserError("--submission needs a row for every image: drop --skip-bad-images and fix the images")
    return SUBMISSIONS[args.submission]


def run(args) -> int:
    from .api import load
    from .data.cxr_lt import read_cxr_lt
    from .inference import TableOptions
    from .io import check_output_file
    from .predictions import write_predictions
    from .submission import submission_classes, write_submission

    check_output_file(args.out)
    names = requested_classes(args)
    model = load(args.model, args.device, calibrated=not args.uncalibrated)
    task = submission_task(args)
    if task and names is None and not set(submission_classes(task)) <= set(model.classes):
        names = submission_classes(task)  # scored by name: a text-query run (else a one-line error)
    table = read_cxr_lt(args.csv, classes=[])
    options = TableOptions(batch_size=args.batch_size, tta=args.tta, skip_bad_images=args.skip_bad_images,
                           aggregate=args.aggregate)
    df = model.predict_table(table, args.image_root, names, options)
    classes = list(df.columns[2:])
    probs = df[classes].to_numpy()
    if args.normal_gating:
        from .normal_gating import normal_gate

        probs = normal_gate(probs, classes, args.normal_gating)
    if task:
        write_submission(args.out, df["dicom_id"].to_numpy(), classes, probs, task)
    else:
        write_predictions(args.out, df["dicom_id"], df["study_id"], classes, probs)
    how = "calibrated" if model.calibrated else "raw"
    print(f"wrote {len(df)} predictions ({len(classes)} classes, {how} probabilities) to {args.out}")
    unseen = [c for c in classes if c not in model.classes]
    if model.calibrated and unseen:
        print(f"{len(unseen)} classes the run was not trained on use the median fitted temperature")
    skipped = df.attrs["skipped_rows"]
    if skipped:
        first = table.frame["fpath"].iloc[skipped[0]]
        print(f"skipped {len(skipped)} unreadable images (first: {first}); their rows are not in {args.out}",
              file=sys.stderr)
    return 0
