"""``chexfusion inspect``: check a dataset CSV and its images before a long GPU job.

Everything that would otherwise stop a run hours in -- a missing column, a
duplicate id, a non-numeric label, a missing or unreadable image -- is found
here in seconds to minutes, together with the numbers worth a glance before
training: views, images per study, per-class positives and their head /
medium / tail group, and how many labels are uncertain (-1) or blank.

Exit status 0 when clean; 2 with one line on stderr on a structural error
(raised by the format's reader) or, after the report, when images are missing
or unreadable. Each dataset format plugs in as a reader in ``FORMATS`` that
returns a :class:`~chexfusion.data.cxr_lt.CxrLtTable`.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .data.classes import prevalence_group
from .data.cxr_lt import CxrLtTable, read_cxr_lt
from .data.external import read_chexpert, read_nih, read_vindr
from .data.images import ImageError, read_image
from .data.padchest import join_challenge_csv, read_padchest
from .data.studies import study_sizes
from .data.views import VIEWS
from .errors import EXIT_USER_ERROR, UserError
from .progress import tqdm

# External sets report the project classes their labels map onto (chexfusion/resources/external_label_map.csv).
FORMATS: dict[str, Callable[[Path], CxrLtTable]] = {
    "cxr-lt": read_cxr_lt, "nih": read_nih, "chexpert": read_chexpert, "vindr": read_vindr,
    "padchest": read_padchest}
JOINED_FORMATS = ("cxr-lt-2026",)  # CSVs read together with a second file (see _read)
EXAMPLES = 10  # missing / unreadable files listed by name in the report
DECODE_SIZE = 64  # small: decoding is only a readability check (JPEGs then decode at 1/8 scale)


def add_arguments(parser) -> None:
    parser.add_argument("--csv", required=True, type=Path, help="the dataset CSV")
    parser.add_argument("--image-root", required=True, type=Path, help="folder the CSV's fpath values are relative to")
    parser.add_argument("--decode", action="store_true", help="also decode every image (slower, finds corrupt files)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--format", choices=sorted([*FORMATS, *JOINED_FORMATS]), default="cxr-lt",
                        help="CSV layout: cxr-lt (default), or an external set: nih (Data_Entry_2017.csv), chexpert "
                             "(train.csv / valid.csv), vindr (annotations; --image-root is the folder of its images), "
                             "padchest (PadChest's metadata CSV, Labels mapped onto the CXR-LT 2026 classes), "
                             "cxr-lt-2026 (a challenge CSV; needs --padchest-metadata)")
    parser.add_argument("--padchest-metadata", type=Path, default=None,
                        help="with --format cxr-lt-2026: PadChest's metadata CSV (studies, views, image folders)")
    parser.add_argument("--removal", type=Path, default=None,
                        help="with --format cxr-lt-2026: Removal.csv (its images are left out and counted)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads decoding images with --decode")


def _missing(table: CxrLtTable, paths: list[str]) -> list[dict]:
    found = [os.path.isfile(p) for p in tqdm(paths, desc="checking files", unit="img", disable=None, file=sys.stderr)]
    return [{"line": table.line_of(i), "path": p} for i, (p, ok) in enumerate(zip(paths, found)) if not ok]


def _decode_error(path: str) -> str | None:
    try:
        read_image(path, DECODE_SIZE)
    except ImageError as exc:
        return str(exc)
    return None


def _unreadable(table: CxrLtTable, paths: list[str], skip: set[str], workers: int) -> list[dict]:
    todo = [(i, p) for i, p in enumerate(paths) if p not in skip]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL and pydicom decode outside the GIL
        errors = list(tqdm(pool.map(_decode_error, [p for _, p in todo]), total=len(todo), desc="decoding",
                           unit="img", disable=None, file=sys.stderr))
    return [{"line": table.line_of(i), "path": p, "error": e} for (i, p), e in zip(todo, errors) if e is not None]


def _class_report(table: CxrLtTable) -> dict:
    if not table.has_labels:
        return {"classes": {}, "prevalence": {}, "prevalence_groups": {}, "uncertain_labels": {}, "blank_labels": {}}
    names = table.classes
    prevalence = table.prevalence()
    return {
        "classes": dict(zip(names, map(int, table.positives()))),
        "prevalence": {n: round(float(p), 6) for n, p in zip(names, prevalence)},
        "prevalence_groups": {n: prevalence_group(float(p)) for n, p in zip(names, prevalence)},
        "uncertain_labels": dict(zip(names, map(int, table.uncertain_counts()))),
        "blank_labels": dict(zip(names, map(int, table.blank_counts()))),
    }


def build_report(table: CxrLtTable, image_root: Path, decode: bool, workers: int = 1, fmt: str = "cxr-lt") -> dict:
    """All counts of the report as plain JSON-ready values."""
    frame = table.frame
    subjects = frame["subject_id"][frame["subject_id"] != ""]
    paths = table.image_paths(image_root)
    missing = _missing(table, paths)
    unreadable = _unreadable(table, paths, {m["path"] for m in missing}, workers) if decode else None
    views = frame["view"].value_counts()
    return {
        "csv": str(table.path),
        "format": fmt,
        "image_root": str(image_root),
        "images": len(table),
        "studies": int(frame["study_id"].nunique()),
        "subjects": int(subjects.nunique()),
        "views": {v: int(views.get(v, 0)) for v in VIEWS},
        "view_codes": {str(code): int(n) for code, n in frame["ViewPosition"].value_counts().items()},
        "study_sizes": {str(size): n for size, n in study_sizes(frame).items()},
        **_class_report(table),
        "missing_images": len(missing),
        "missing_examples": missing[:EXAMPLES],
        "decoded": decode,
        "unreadable_images": None if unreadable is None else len(unreadable),
        "unreadable_examples": [] if unreadable is None else unreadable[:EXAMPLES],
    }


def _counts(mapping: dict, blank: str = "(blank)") -> str:
    return ", ".join(f"{key or blank} {value}" for key, value in mapping.items()) or "none"


def format_text(report: dict) -> str:
    """The human-readable report."""
    sizes = ", ".join(f"{size}: {n}" for size, n in report["study_sizes"].items())
    lines = [
        f"{report['csv']} ({report['format']}), images under {report['image_root']}",
        f"images     {report['images']}",
        f"studies    {report['studies']}  (images per study -> studies: {sizes or 'none'})",
        f"subjects   {report['subjects']}",
        f"views      {_counts(report['views'])}",
        f"view codes {_counts(report['view_codes'])}",
    ]
    classes = report["classes"]
    if classes:
        groups = list(report["prevalence_groups"].values())
        summary = ", ".join(f"{g} {groups.count(g)}" for g in ("head", "medium", "tail"))
        width = max(len("class"), *(len(c) for c in classes))
        lines += ["", f"{len(classes)} classes ({summary})",
                  f"{'class':<{width}}  positives  prevalence  group   uncertain(-1)  blank"]
        for name, positives in classes.items():
            lines.append(
                f"{name:<{width}}  {positives:>9}  {100 * report['prevalence'][name]:>9.2f}%  "
                f"{report['prevalence_groups'][name]:<6}  {report['uncertain_labels'][name]:>13}  "
                f"{report['blank_labels'][name]:>5}"
            )
    else:
        lines += ["", "no label columns"]
    lines.append("")
    lines.append(f"missing image files: {report['missing_images']}")
    lines += [f"  line {m['line']}: {m['path']}" for m in report["missing_examples"]]
    if report["decoded"]:
        lines.append(f"unreadable images: {report['unreadable_images']}")
        lines += [f"  line {u['line']}: {u['error']}" for u in report["unreadable_examples"]]
    else:
        lines.append("unreadable images: not checked (add --decode)")
    return "\n".join(lines)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _problem_line(report: dict) -> str | None:
    """One line summing up missing and unreadable images, naming the first of each."""
    parts = []
    if report["missing_images"]:
        first = report["missing_examples"][0]
        parts.append(f"{_plural(report['missing_images'], 'image file')} missing under {report['image_root']} "
                     f"(first: line {first['line']}, {first['path']})")
    if report["unreadable_images"]:
        first = report["unreadable_examples"][0]
        parts.append(f"{_plural(report['unreadable_images'], 'image')} unreadable (first: line {first['line']}, "
                     f"{first['error']})")
    return f"{report['csv']}: " + "; ".join(parts) if parts else None


def _read(args) -> CxrLtTable:
    if args.format != "cxr-lt-2026":
        if args.padchest_metadata is not None or args.removal is not None:
            raise UserError("--padchest-metadata and --removal go with --format cxr-lt-2026")
        return FORMATS[args.format](args.csv)
    if args.padchest_metadata is None:
        raise UserError("--format cxr-lt-2026 needs --padchest-metadata (the challenge CSV has no study or view)")
    conversion = join_challenge_csv(args.csv, args.padchest_metadata, args.removal)
    if conversion.removed:
        print(f"{conversion.removed} images listed in {args.removal} left out", file=sys.stderr)
    return conversion.table


def run(args) -> int:
    if not args.image_root.is_dir():
        raise UserError(f"image root is not a folder: {args.image_root}")
    table = _read(args)
    report = build_report(table, args.image_root, args.decode, args.workers, args.format)
    print(json.dumps(report) if args.json else format_text(report))
    problem = _problem_line(report)
    if problem:
        print(f"chexfusion: error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
