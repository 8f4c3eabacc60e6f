"""``chexfusion localize``: do the heat maps point at the findings? Scored against ground-truth regions.

For every image and finding with a region (``--regions``: the ``<split>_regions.csv``
that ``chexfusion synth`` writes, a box CSV, or VinDr-CXR's annotations), each
method's map of that finding on that image is scored by the pointing game and
the energy inside the region (:mod:`.scores`), next to a uniform-random map's
expected scores. Every method's map is made of the backbone map's cells, so the
pointing game reads each map, and the random map, on that grid (:mod:`.scores`,
"Coarse maps"). A stage-2 map is the study's evidence on that image (the
study's logit, back through the fusion model). Prints a table per class; with
``--json`` the last line is one JSON object, ``methods`` -> method ->
``pointing_game`` / ``energy_inside`` -> ``overall`` and ``per_class``, and
``grid``, the cells the maps were read on.
"""

from __future__ import annotations

import json
import sys

from ..errors import UserError
from .cam import METHODS
from .scores import DEFAULT_TOLERANCE, Tally, format_table, widened

COMMAND = "chexfusion localize"


def add_arguments(parser) -> None:
    from .command import add_run_and_images

    add_run_and_images(parser)
    parser.add_argument("--regions", required=True,
                        help="region file: synth's <split>_regions.csv, a box CSV, or VinDr-CXR's")
    parser.add_argument("--method", action="append", choices=METHODS,
                        help="map method (repeat for several; default: all of " + ", ".join(METHODS) + ")")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="pointing-game tolerance as a share of the image side (default 15/224)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated findings to score (default: every finding with a region)")
    parser.add_argument("--max-studies", type=int, default=None, help="score the first N studies with a region only")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def scored_classes(text: str, classes: list[str]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        raise UserError(f"--classes: '{unknown[0] if unknown else text}' is not a class of the model")
    return names


def run(args) -> int:
    from ..inference import load_predictor
    from ..progress import tqdm
    from .cam import heat_maps, map_grid
    from .models import explained_model
    from .regions import image_size_of, model_frame_mask, read_regions
    from .studies import planned_units, read_table, read_unit

    if not 0 <= args.tolerance < 1:
        raise UserError(f"--tolerance must be a share of the image side in [0, 1) (got {args.tolerance})")
    methods = list(dict.fromkeys(args.method or METHODS))
    model = explained_model(load_predictor(args.model, device="cpu"))
    table = read_table(args.csv, args.csv_format)
    ids = table.frame["dicom_id"].astype(str).tolist()
    regions = read_regions(args.regions, ids, model.classes)
    if args.classes is not None:
        regions.keep_only(scored_classes(args.classes, model.classes))
    wanted = {r for r, d in enumerate(ids) if regions.classes_of(d)}
    units, past_cap = planned_units(table, model.max_images, wanted)
    units = units[: args.max_studies] if args.max_studies else units
    paths, pre = table.image_paths(args.image_root), model.preprocess
    near_px = args.tolerance * pre.image_size
    tally, grid = Tally(), None
    for rows in tqdm(units, desc="localize", unit="study", file=sys.stderr):
        unit = read_unit(table, paths, rows, pre)
        grid = grid or map_grid(model, unit.images, unit.views)
        needed = sorted({c for r in rows for c in regions.classes_of(ids[r])})
        index = [model.classes.index(c) for c in needed]
        maps = {m: heat_maps(model, m, unit.images, unit.views, index).numpy() for m in methods}
        for i, r in enumerate(rows):
            size = image_size_of(paths[r])
            for name in regions.classes_of(ids[r]):
                region = model_frame_mask(regions.shapes[ids[r]][name], size, pre.image_size, pre.resize)
                near = widened(region, near_px)
                for m in methods:
                    tally.add_map(m, name, maps[m][needed.index(name), i], region, near, grid)
                tally.add_random(name, region, near, grid)
    summary = tally.summary()
    print(format_table(summary))
    skipped = dict(regions.skipped)
    if past_cap:
        skipped[f"images past the run's max_images ({model.max_images})"] = past_cap
    for reason, count in skipped.items():
        print(f"skipped {count}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": str(args.model), "kind": "stage2" if not model.per_image else "stage1",
                          "tolerance": args.tolerance, "grid": list(grid or ()), "studies": len(units),
                          "methods": summary,
                          "skipped": skipped}))
    return 0
