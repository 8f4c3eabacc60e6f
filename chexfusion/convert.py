"""``chexfusion convert``: another dataset's layout into the project's CXR-LT CSV (CXR-LT 2026 / PadChest, or
NIH ChestX-ray14 split by patient into train / val / test CSVs: ``--format nih``).

The challenge's CSV has no study and no view, so nothing downstream could group PadChest's PA + lateral pairs;
joined to PadChest's metadata it becomes an ordinary CXR-LT CSV (``dicom_id, subject_id, study_id,
ViewPosition, fpath`` + the classes) that ``inspect``, both stages, ``predict`` and ``evaluate`` read as they
read MIMIC's. With ``--json`` the last line is the summary as one JSON object.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

from .errors import UserError
from .io import atomic_write_text, check_output_file, check_output_folder

FORMATS = ("cxr-lt-2026", "nih")
NIH_SPLIT_NAMES = ("train", "val", "test")
OUT_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "fpath")
EXAMPLES = 3


def add_arguments(parser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="the input layout")
    parser.add_argument("--labels", required=True, type=Path,
                        help="the challenge CSV: CXRLT_2026_training.csv, or a dev / test CSV (ids only); "
                             "nih: Data_Entry_2017.csv")
    parser.add_argument("--padchest-metadata", type=Path, default=None,
                        help="cxr-lt-2026: PadChest's PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv")
    parser.add_argument("--split", default="70,10,20",
                        help="nih: train,val,test shares of the patients (default 70,10,20, seed 004's split)")
    parser.add_argument("--seed", type=int, default=0, help="nih: the seed of the patient split (default 0)")
    parser.add_argument("--removal", type=Path, default=None, help="Removal.csv: images not to train on (dropped)")
    parser.add_argument("--image-root", required=True, type=Path,
                        help="the folder holding PadChest's numbered ImageDir folders (the CSV's fpath root)")
    parser.add_argument("--out", required=True, type=Path,
                        help="the CXR-LT CSV to write; nih: a folder for train.csv, val.csv, test.csv")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="keep ImageIDs the metadata lacks, each a one-image study of unknown view")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object, last")


def table_csv(table) -> str:
    """A CXR-LT table as CSV text: the id columns, then the class columns as 0 / 1 / -1 / blank."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(OUT_COLUMNS) + list(table.classes))
    frame = table.frame
    labels = table.raw_labels
    for i, row in enumerate(frame[list(OUT_COLUMNS)].itertuples(index=False)):
        values = [] if labels is None else ["" if v != v else str(int(v)) for v in labels[i].tolist()]
        writer.writerow(list(row) + values)
    return out.getvalue()


def missing_images(table, image_root: Path) -> list[str]:
    """fpaths with no file under the image root (reported, not fatal: the parts may be unzipped later)."""
    return [p for p, full in zip(table.frame["fpath"], table.image_paths(image_root)) if not os.path.isfile(full)]


def format_text(conversion, out: Path) -> str:
    summary = conversion.summary()
    views = ", ".join(f"{v} {n}" for v, n in summary["views"].items())
    projections = ", ".join(f"{k} {n}" for k, n in conversion.projections.items()) or "none"
    return "\n".join([
        f"wrote {summary['images']} images in {summary['studies']} studies to {out}",
        f"views        {views}",
        f"projections  {projections}",
        f"removed      {summary['removed']} (listed in the removal CSV)",
        f"unmatched    {summary['unmatched']} (not in the metadata; kept as one-image studies of unknown view)",
        f"classes      {len(conversion.table.classes)}",
    ])


def split_nih(labels: Path, out: Path, split: str, seed: int) -> dict[str, int]:
    """NIH's ``Data_Entry_2017.csv`` (read by ``read_nih``, its 14 labels) as train / val / test CXR-LT CSVs
    under ``out``, split by patient; returns the images per split."""
    from .data.external import read_nih
    from .data.splits import parse_fractions, split_by_patient

    fractions = parse_fractions(split)
    if len(fractions) != len(NIH_SPLIT_NAMES):
        raise UserError(f"--split must give three shares (train,val,test), got '{split}'")
    table = read_nih(labels)
    parts = split_by_patient(table.frame["subject_id"].to_numpy(), fractions, seed)
    for name, rows in zip(NIH_SPLIT_NAMES, parts):
        atomic_write_text(out / f"{name}.csv", table_csv(table.select(rows)))
    return {name: len(rows) for name, rows in zip(NIH_SPLIT_NAMES, parts)}


def run(args) -> int:
    from .data.padchest import join_challenge_csv

    if not args.image_root.is_dir():
        raise UserError(f"--image-root is not a folder: {args.image_root}")
    if args.format == "nih":
        check_output_folder(args.out)
        counts = split_nih(args.labels, args.out, args.split, args.seed)
        print(json.dumps(counts) if args.json else
              f"wrote {', '.join(f'{n} {c} images' for n, c in counts.items())} (split by patient, seed "
              f"{args.seed}) to {args.out}")
        return 0
    if args.padchest_metadata is None:
        raise UserError("--format cxr-lt-2026 needs --padchest-metadata")
    check_output_file(args.out)
    conversion = join_challenge_csv(args.labels, args.padchest_metadata, args.removal, args.allow_unmatched)
    atomic_write_text(args.out, table_csv(conversion.table))
    absent = missing_images(conversion.table, args.image_root)
    if absent:
        print(f"chexfusion: note: {len(absent)} of the images are not under {args.image_root} yet "
              f"(first: {', '.join(absent[:EXAMPLES])}); `chexfusion inspect` lists them", file=sys.stderr)
    print(json.dumps(conversion.summary()) if args.json else format_text(conversion, args.out))
    return 0
