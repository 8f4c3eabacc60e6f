"""``chexfusion explain``: heat maps of a run's findings on every image, as PNG overlays and raw arrays.

For each study of ``--csv`` (stage 2: the study; stage 1: each image), the
findings named by ``--classes``, or else the ``--top`` most probable ones, get
a map per image by each ``--method`` (:mod:`.cam`). Written under ``--out``:

- ``maps.parquet``: one row per image, finding and method: ``dicom_id``,
  ``study_id``, ``class``, ``method``, ``probability`` (the unit's), ``size``
  (the model input side ``S``) and ``map`` (``S*S`` float32, row-major, not
  normalised);
- ``overlays/<dicom_id>/<method>/<class>.png``: the model's input image with
  the map over it, scaled so the unit's (study's) maximum is full colour, as
  the web demo does, so the views of a study compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from .cam import METHODS
from .studies import CSV_FORMATS

COLORMAP = "jet"
OVERLAY_ALPHA = 0.45


def add_run_and_images(parser) -> None:
    """The arguments explain and localize share: the run, and the images it maps."""
    parser.add_argument("--model", required=True, help="a stage-1 or stage-2 run folder")
    parser.add_argument("--csv", required=True,
                        help="the images: a CXR-LT CSV (or VinDr-CXR's, with --csv-format vindr)")
    parser.add_argument("--csv-format", default="cxr-lt", choices=CSV_FORMATS, help="layout of --csv (default cxr-lt)")
    parser.add_argument("--image-root", required=True, help="folder the CSV's fpath values are relative to")


def add_arguments(parser) -> None:
    add_run_and_images(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder (maps.parquet, overlays/)")
    parser.add_argument("--method", action="append", choices=METHODS,
                        help="map method (repeat for several; default groupcam)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated findings to map (default: the --top most probable)")
    parser.add_argument("--top", type=int, default=3,
                        help="without --classes: this many most probable findings (default 3)")


def overlay(gray: np.ndarray, heat: np.ndarray, peak: float) -> np.ndarray:
    """RGB uint8: the grayscale image with ``heat / peak`` in colour over it."""
    from matplotlib import colormaps

    base = np.repeat(gray[..., None], 3, axis=2)
    scaled = np.clip(heat / peak, 0, 1) if peak > 0 else np.zeros_like(heat)
    colour = colormaps[COLORMAP](scaled)[..., :3]
    weight = OVERLAY_ALPHA * scaled[..., None]
    return np.clip(255 * ((1 - weight) * base + weight * colour) + 0.5, 0, 255).astype(np.uint8)


def chosen_classes(args, classes: list[str]) -> list[int] | None:
    if args.classes is None:
        if args.top < 1:
            raise UserError(f"--top must be at least 1 (got {args.top})")
        return None
    names = [n.strip() for n in args.classes.split(",") if n.strip()]
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        raise UserError(f"--classes: '{unknown[0] if unknown else args.classes}' is not a class of the model")
    return [classes.index(n) for n in names]


def _png(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def run(args) -> int:
    import torch

    from ..data.synth.regions import class_slug
    from ..inference import load_predictor
    from ..io import atomic_write_bytes, check_output_folder
    from ..progress import tqdm
    from .cam import heat_maps
    from .maps_file import write_maps
    from .models import explained_model
    from .studies import planned_units, read_table, read_unit

    check_output_folder(args.out)
    methods = list(dict.fromkeys(args.method or ["groupcam"]))
    model = explained_model(load_predictor(args.model, device="cpu"))
    named = chosen_classes(args, model.classes)
    table = read_table(args.csv, args.csv_format)
    units, past_cap = planned_units(table, model.max_images)
    paths, ids = table.image_paths(args.image_root), table.frame["dicom_id"].astype(str).tolist()
    studies = table.frame["study_id"].astype(str).tolist()
    records = []
    for rows in tqdm(units, desc="explain", unit="study", file=sys.stderr):
        unit = read_unit(table, paths, rows, model.preprocess)
        with torch.no_grad():
            probs = torch.sigmoid(model.logits(unit.images[None], unit.views)[0]).numpy()  # [U, K]
        per_image = [named if named is not None else list(np.argsort(-probs[min(i, len(probs) - 1)])[: args.top])
                     for i in range(len(rows))]
        needed = sorted({int(k) for ks in per_image for k in ks})
        for method in methods:
            maps = heat_maps(model, method, unit.images, unit.views, needed).numpy()  # [len(needed), N, S, S]
            for i, r in enumerate(rows):
                for k in per_image[i]:
                    j = needed.index(int(k))
                    peak = float(maps[j].max())
                    name = model.classes[int(k)]
                    rel = Path("overlays") / ids[r] / method / f"{class_slug(name)}.png"
                    atomic_write_bytes(args.out / rel, _png(overlay(unit.gray[i], maps[j, i], peak)))
                    records.append((ids[r], studies[r], name, method, float(probs[min(i, len(probs) - 1), int(k)]),
                                    maps[j, i]))
    write_maps(args.out / "maps.parquet", records)
    if past_cap:
        print(f"skipped {past_cap} images past the run's max_images ({model.max_images})", file=sys.stderr)
    print(f"wrote {len(records)} maps of {len(units)} studies to {args.out}")
    return 0
