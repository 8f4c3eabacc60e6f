"""``chexfusion synth``: write the synthetic demo dataset.

Order of work: draw the cohort, write ``synth_meta.json``, render the images
and the masks of where each finding was drawn (in a process pool; every image
has its own seeds, so the bytes do not depend on the number of workers), write
the NIH CSV, each split's ``<split>_regions.csv`` (:mod:`.regions`) and one free-text
report per study (``reports.csv``, ``text/reports.py``), and write the three CXR-LT
CSVs last, so a dataset with CSVs is a complete one. Re-running into a folder that
holds an earlier synthetic dataset replaces it; any other non-empty folder is
refused rather than mixed with.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import UserError
from ...io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_folder
from ...progress import tqdm
from ..classes import LABEL_SETS
from ..reports import REPORTS_CSV
from . import GENERATOR_VERSION, cxr_lt_2026
from .cohort import MEANINGS, MIN_STUDIES, SPLITS, Cohort, build_cohort
from .external import NIH_LABELS, build_external, nih_csv
from .findings import SIGNATURES, view_only
from .labels import LATENT, PREVALENCE_FLOOR, floor_for, label_model
from .radiograph import RadiographSpec, acquire, acquisition_rng, draw_scene
from .regions import REGION_COLUMNS, REGIONS_DIR, finding_regions, mask_path, png_bytes, region_row, regions_csv_name

META_NAME = "synth_meta.json"
EXTERNAL_DIR = Path("external") / "nih"
CSV_COLUMNS = ["dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath"]
JPEG_QUALITY = 95  # as MIMIC-CXR-JPG
EXTERNAL_PER_TRAIN_IMAGE = 1.5


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (created; an earlier synth output is replaced)")
    parser.add_argument("--studies", type=int, default=2000, help="number of CXR-LT studies (default 2000)")
    parser.add_argument("--label-set", default="cxr-lt-2024", choices=[*LABEL_SETS, cxr_lt_2026.LABEL_SET],
                        help="class list (default cxr-lt-2024); cxr-lt-2026 also writes the 2026 challenge's "
                             "layout (PadChest-style 16-bit PNGs, challenge CSVs, metadata)")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="flip each training label with this probability (default 0)")
    parser.add_argument("--external-images", type=int, default=None,
                        help="images in the NIH-format external set (default 1.5x the training images)")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: the CPUs available; output does not depend on it)")


def run(args) -> int:
    validate(args)
    started = time.monotonic()
    out: Path = args.out
    prepare_output(out)
    if args.label_set == cxr_lt_2026.LABEL_SET:
        return run_2026(args, started)
    model = label_model(args.label_set)
    cohort = build_cohort(args.seed, args.studies, model, args.label_noise)
    train_images = sum(1 for s in cohort.image_study if cohort.study_split[s] == 0)
    n_external = args.external_images
    if n_external is None:
        n_external = round(EXTERNAL_PER_TRAIN_IMAGE * train_images)
    external = build_external(args.seed, n_external)
    atomic_write_json(out / META_NAME, metadata(args, cohort, external))

    tasks = cohort_tasks(args, cohort, out) + external_tasks(args, external, out)
    regions = render_all(tasks, args.workers or available_cpus())
    atomic_write_text(out / EXTERNAL_DIR / "Data_Entry_2017.csv", nih_csv(external, args.seed))
    split_of = {cohort.dicom_id[i]: int(cohort.study_split[s]) for i, s in enumerate(cohort.image_study)}
    for k, split in enumerate(SPLITS):
        atomic_write_text(out / regions_csv_name(split), regions_csv([r for r in regions if split_of[r[0]] == k]))
    atomic_write_text(out / REPORTS_CSV, reports_csv(cohort, args.seed))
    for k, split in enumerate(SPLITS):
        atomic_write_text(out / f"{split}.csv", split_csv(cohort, k))
    elapsed = time.monotonic() - started
    n_images = len(cohort.image_study)
    print(f"wrote {n_images} images in {len(cohort.study_id)} studies ({args.label_set}, "
          f"{len(model.classes)} classes) and {n_external} NIH-format images to {out} in {elapsed:.1f} s")
    return 0


def run_2026(args, started: float) -> int:
    """The demo in the CXR-LT 2026 layout (see :mod:`.cxr_lt_2026`): the 2024 cohort's pictures, 2026's files."""
    cohort = build_cohort(args.seed, args.studies, label_model(cxr_lt_2026.BASE_LABEL_SET))
    layout = cxr_lt_2026.Layout(cohort, args.seed)
    meta = metadata(args, cohort, build_external(args.seed, 0))
    meta.update(classes=cxr_lt_2026.task_classes("1"), task2_classes=cxr_lt_2026.task_classes("2"),
                drawn_as=cxr_lt_2026.signs(), external=None, signatures=None, positive_studies=None,
                frontal_only=None, lateral_only=None)
    atomic_write_json(args.out / META_NAME, meta)
    tasks = [(task[0], str(args.out / layout.fpath(i)), f"PNG16-{int(layout.bits[i])}", None)
             for i, task in enumerate(cohort_tasks(args, cohort, args.out))]
    render_all(tasks, args.workers or available_cpus())
    counts = cxr_lt_2026.write_csvs(args.out, layout, args.seed)
    atomic_write_json(args.out / META_NAME, {**meta, "layout_2026": counts})
    print(f"wrote {len(tasks)} 16-bit PNGs in {len(cohort.study_id)} studies (cxr-lt-2026 layout, "
          f"{counts['removed']} in Removal.csv) to {args.out} in {time.monotonic() - started:.1f} s")
    return 0


def validate(args) -> None:
    if args.studies < MIN_STUDIES:
        raise UserError(f"--studies must be at least {MIN_STUDIES} (got {args.studies})")
    if not 32 <= args.image_size <= 2048:
        raise UserError(f"--image-size must be between 32 and 2048 pixels (got {args.image_size})")
    if args.label_set == cxr_lt_2026.LABEL_SET and args.label_noise:
        raise UserError("--label-noise applies to the CXR-LT 2023 / 2024 layouts, not cxr-lt-2026")
    if not 0.0 <= args.label_noise < 0.5:
        raise UserError(f"--label-noise must be a probability in [0, 0.5) (got {args.label_noise})")
    if args.external_images is not None and args.external_images < 0:
        raise UserError(f"--external-images must be 0 or more (got {args.external_images})")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")


def prepare_output(out: Path) -> None:
    """Create ``out``, or clear an earlier synthetic dataset in it; refuse anything else."""
    check_output_folder(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / META_NAME).is_file():
            raise UserError(f"--out {out} is not empty and holds no synthetic dataset ({META_NAME}); "
                            "choose a new or empty folder")
        for name in ("files", "external", REGIONS_DIR, *cxr_lt_2026.OUTPUTS):
            if (out / name).is_dir():
                shutil.rmtree(out / name, ignore_errors=True)
            else:
                (out / name).unlink(missing_ok=True)
        for name in [f"{s}.csv" for s in SPLITS] + [regions_csv_name(s) for s in SPLITS] + [META_NAME]:
            (out / name).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror})") from None


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

def cohort_tasks(args, cohort: Cohort, out: Path) -> list:
    """One task per CXR-LT image: its spec, its path, and where its findings' masks go (classes of the label set)."""
    classes = frozenset(cohort.model.classes)
    tasks = []
    for i, s in enumerate(cohort.image_study):
        p = cohort.study_patient[s]
        findings = tuple(LATENT[j] for j in cohort.drawn[s].nonzero()[0])
        spec = RadiographSpec(args.seed, (10, int(p)), (11, int(s)), (14, i), cohort.image_content[i],
                              bool(cohort.study_portable[s]), str(cohort.sex[p]), float(cohort.study_age[s]),
                              findings, args.image_size)
        tasks.append((spec, str(out / cohort.fpath(i)), "JPEG", (str(out), cohort.dicom_id[i], classes)))
    return tasks


def external_tasks(args, ext, out: Path) -> list:
    tasks = []
    for i, p in enumerate(ext.image_patient):
        findings = tuple(LATENT[j] for j in ext.drawn[i].nonzero()[0])
        spec = RadiographSpec(args.seed, (20, int(p)), (21, i), (24, i), "frontal", bool(ext.portable[i]),
                              str(ext.sex[p]), float(ext.age[i]), findings, args.image_size)
        tasks.append((spec, str(out / EXTERNAL_DIR / "images" / ext.image_index(i)), "PNG", None))
    return tasks


def render_to_file(task) -> list:
    """Write one image (and its findings' masks, for a CXR-LT image); return its regions.csv rows."""
    spec, path, fmt, regions = task
    buffer = io.BytesIO()
    scene = draw_scene(spec)
    image = Image.fromarray(acquire(scene, acquisition_rng(spec), spec.portable))
    if fmt.startswith("PNG16-"):  # PadChest: 16-bit PNG holding 12 or 10 stored bits
        top = 2 ** int(fmt.split("-")[1]) - 1
        stored = (np.asarray(image, dtype=np.uint32) * top + 127) // 255
        Image.fromarray(stored.astype(np.uint16)).save(buffer, format="PNG", compress_level=1)
    elif fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    atomic_write_bytes(path, buffer.getvalue())
    if regions is None:
        return []
    root, dicom_id, classes = regions
    rows = []
    for name, mask in finding_regions(spec, scene).items():
        if name in classes:
            atomic_write_bytes(Path(root) / mask_path(dicom_id, name), png_bytes(mask))
            rows.append(region_row(dicom_id, name, mask))
    return rows


def render_all(tasks: list, workers: int) -> list:
    """Render every task; the regions.csv rows of all images, in task order."""
    rows = []
    progress = tqdm(total=len(tasks), desc="synth images", unit="img", file=sys.stderr, mininterval=0.5)
    with progress:
        if workers <= 1 or len(tasks) < 64:
            for task in tasks:
                rows.extend(render_to_file(task))
                progress.update()
            return rows
        chunk = max(1, min(32, len(tasks) // (workers * 8)))
        context = multiprocessing.get_context("spawn")  # never fork a parent that may hold torch threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for image_rows in pool.map(render_to_file, tasks, chunksize=chunk):
                rows.extend(image_rows)
                progress.update()
    return rows


# ---------------------------------------------------------------------------
# CSVs and metadata
# ---------------------------------------------------------------------------

def regions_csv(rows: list) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REGION_COLUMNS)
    writer.writerows(rows)
    return out.getvalue()


def split_csv(cohort: Cohort, split: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + list(cohort.model.classes))
    for i, s in enumerate(cohort.image_study):
        if cohort.study_split[s] != split:
            continue
        code = cohort.image_code[i]
        writer.writerow([cohort.dicom_id[i], int(cohort.subject_id[cohort.study_patient[s]]), int(cohort.study_id[s]),
                         code, MEANINGS.get(code, ""), cohort.fpath(i), *cohort.written[s].tolist()])
    return out.getvalue()


def reports_csv(cohort: Cohort, seed: int) -> str:
    """One free-text report per study from its CSV labels (``text/reports.py``), every split."""
    from ...text.reports import report_rng, study_report

    classes = list(cohort.model.classes)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["study_id", "report"])
    for s, study in enumerate(cohort.study_id):
        positive = [classes[k] for k in np.flatnonzero(cohort.written[s] == 1)]
        writer.writerow([int(study), study_report(positive, classes, cohort.model.normal_class,
                                                  report_rng(seed, int(study)))])
    return out.getvalue()


def metadata(args, cohort: Cohort, ext) -> dict:
    model = cohort.model
    classes = list(model.classes)
    counts, positives = {}, {}
    for k, split in enumerate(SPLITS):
        studies = cohort.study_split == k
        images = studies[cohort.image_study]
        counts[split] = {"studies": int(studies.sum()), "images": int(images.sum()),
                         "subjects": int(len(set(cohort.study_patient[studies].tolist())))}
        positives[split] = {c: int(cohort.written[studies, j].sum()) for j, c in enumerate(classes)}
    counts["external_nih"] = {"images": int(len(ext.image_patient)), "patients": int(len(ext.patient_id))}
    signatures = {c: SIGNATURES[c].summary for c in classes if c in SIGNATURES}
    signatures[model.normal_class] = "no signature: the absence of every finding"
    return {
        "generator": "chexfusion synth",
        "generator_version": GENERATOR_VERSION,
        "seed": args.seed,
        "label_set": args.label_set,
        "image_size": args.image_size,
        "classes": classes,
        "normal_class": model.normal_class,
        "counts": counts,
        "positive_studies": positives,
        "frontal_only": [c for c in view_only("frontal") if c in classes],
        "lateral_only": [c for c in view_only("lateral") if c in classes],
        "signatures": signatures,
        "prevalence_floor": PREVALENCE_FLOOR,
        "min_positive_studies_per_split": {s: floor_for(counts[s]["studies"]) for s in SPLITS},
        "floor_added_studies": cohort.floor_added,
        "label_noise": {"probability": args.label_noise, "applies_to": "train", "flipped_labels": cohort.noise_flips},
        "external": {"format": "NIH ChestX-ray14", "csv": str(EXTERNAL_DIR / "Data_Entry_2017.csv"),
                     "labels": list(NIH_LABELS), "views": ["frontal"]},
    }
