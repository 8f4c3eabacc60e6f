"""Shared vs per-view backbones, and the stage-2 loss: train what is missing, then tables on the test split.

``chexfusion ablate`` (``make ablate``) trains, or reuses when already
trained, the shared stage-1 backbone and the frontal-only and lateral-only ones,
their feature stores and both stage-2 models, and writes ``ablations/routing.md``
and ``.json``: mAP, mAUROC, head / medium / tail mAP, and the mean AP of the
findings visible in only one view (from the dataset's ``synth_meta.json`` when
there is one), for

- stage 1, max over a study's images (the single-image baseline),
- stage 2 over the shared backbone,
- stage 2 over per-view backbones.

With ``--losses bce,focal,...`` it also trains stage 2 on the shared store with
each of those losses (the config's own loss keeps its parameters, the others
take their defaults; everything else is the config's) and writes
``ablations/stage2-losses.md`` and ``.json``. ``--study losses`` is the loss
study through both stages instead (``chexfusion.loss_study``).

All rows are image-level metrics on the same split (each image carries its
study's prediction), the CXR-LT convention.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .config import load_config
from .errors import UserError
from .io import atomic_write_json, atomic_write_text, check_output_folder

ROWS = (("stage 1, max over images (shared backbone)", "baseline"), ("stage 2, shared backbone", "shared"),
        ("stage 2, per-view backbones", "per_view"))


def view_only_classes(data_dir: Path) -> dict[str, list[str]]:
    meta = data_dir / "synth_meta.json"
    if not meta.is_file():
        return {}
    info = json.loads(meta.read_text())
    return {"frontal_only": info.get("frontal_only", []), "lateral_only": info.get("lateral_only", [])}


def _row(metrics: dict, view_only: dict[str, list[str]]) -> dict:
    row = {k: metrics.get(k) for k in ("mAP", "mAUROC", "head_mAP", "medium_mAP", "tail_mAP")}
    for key, classes in view_only.items():
        aps = [metrics["per_class"][c]["AP"] for c in classes if c in metrics["per_class"]]
        aps = [a for a in aps if a is not None]
        row[f"{key}_AP"] = float(np.mean(aps)) if aps else None
    return row


def add_arguments(parser) -> None:
    parser.add_argument("--stage1-config", default="stage1/config.yaml")
    parser.add_argument("--frontal-config", default="stage1/frontal.yaml")
    parser.add_argument("--lateral-config", default="stage1/lateral.yaml")
    parser.add_argument("--stage2-config", default="stage2/config.yaml")
    parser.add_argument("--per-view-config", default="stage2/per-view.yaml")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--study", default="routing", choices=["routing", "losses"],
                        help="routing: shared vs per-view backbones (+ stage-2 losses with --losses); losses: each "
                             "loss through both stages over --seeds (ablations/losses.md)")
    parser.add_argument("--losses", default="", metavar="A,B",
                        help="routing: also compare these stage-2 losses on the shared store; --study losses: the "
                             "losses, each NAME or NAME:key=value[:key=value] (default: the seven of the study)")
    parser.add_argument("--seeds", default="0,1,2", metavar="S,S", help="--study losses: the seeds of every loss")
    parser.add_argument("--stage1-set", action="append", default=[], metavar="KEY=VALUE",
                        help="--study losses: an override of the stage-1 config only (repeatable)")
    parser.add_argument("--stage2-set", action="append", default=[], metavar="KEY=VALUE",
                        help="--study losses: an override of the stage-2 config only (repeatable)")
    parser.add_argument("--out", default="ablations")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every stage-1 and stage-2 config")


def run(args) -> int:
    from .feature_store.command import write_features
    from .stage1.command import train as train_stage1
    from .stage1.config import Stage1Config
    from .stage2.config import Stage2Config
    from .stage2.train import train_stage2

    if args.study == "losses":
        from .loss_study import run_study

        return run_study(args)
    losses = check_losses(args.losses)
    check_output_folder(args.out)
    for config in (args.stage1_config, args.frontal_config, args.lateral_config):
        train_stage1(load_config(Stage1Config, config, args.overrides))
    shared_cfg, per_view_cfg = (load_config(Stage2Config, c, args.overrides)
                                for c in (args.stage2_config, args.per_view_config))
    for cfg in (shared_cfg, per_view_cfg):
        write_features(cfg)
    shared, per_view = train_stage2(shared_cfg), train_stage2(per_view_cfg)
    sources = {"baseline": shared["stage1_baseline"].get(args.split), "shared": shared.get(args.split),
               "per_view": per_view.get(args.split)}
    if any(v is None for v in sources.values()):
        raise UserError(f"no {args.split} metrics in the stage-2 runs (is data.test_csv set?)")
    view_only = view_only_classes(Path(shared_cfg.data.image_root))
    table = {key: _row(sources[key], view_only) for _, key in ROWS}
    out = Path(args.out)
    atomic_write_json(out / "routing.json", {"split": args.split, "view_only_classes": view_only, "rows": table})
    atomic_write_text(out / "routing.md", markdown(table, args.split, view_only))
    print(markdown(table, args.split, view_only))
    print(f"wrote {out / 'routing.md'} and {out / 'routing.json'}")
    if losses:
        compare_losses(shared_cfg, shared, losses, args)
    return 0


def main(argv=None) -> int:
    """``python -m chexfusion.ablate``: the same as ``chexfusion ablate``."""
    from .cli import main as cli_main

    return cli_main(["ablate", *(sys.argv[1:] if argv is None else argv)])


def check_losses(text: str) -> list[str]:
    """The names of --losses, checked before anything trains; none given (the default) compares no losses."""
    from .losses import LOSS_NAMES
    from .name_lists import parse_name_list

    if text == "":
        return []
    names = parse_name_list(text, "--losses")
    unknown = [name for name in names if name not in LOSS_NAMES]
    if unknown:
        raise UserError(f"--losses: unknown loss '{unknown[0]}' (known: {', '.join(LOSS_NAMES)})")
    return names


def compare_losses(shared_cfg, shared_metrics: dict, losses: list[str], args) -> None:
    """Stage 2 on the shared store once per loss; the config's own loss is the run already trained."""
    import dataclasses

    from .stage2.train import train_stage2

    out = Path(args.out)
    rows = {}
    for name in losses:
        if name == shared_cfg.loss.name:
            metrics = shared_metrics
        else:
            # the loss's own defaults: an override could only add to the config's loss.params
            cfg = dataclasses.replace(shared_cfg, name=f"{shared_cfg.name}-loss-{name}",
                                      loss=dataclasses.replace(shared_cfg.loss, name=name, params={}))
            metrics = train_stage2(cfg)
        rows[name] = _row(metrics[args.split], {})
    text = losses_markdown(rows, args.split, shared_cfg)
    atomic_write_json(out / "stage2-losses.json", {"split": args.split, "rows": rows})
    atomic_write_text(out / "stage2-losses.md", text)
    print(text)
    print(f"wrote {out / 'stage2-losses.md'} and {out / 'stage2-losses.json'}")


def losses_markdown(rows: dict, split: str, cfg) -> str:
    cols = ["mAP", "mAUROC", "head_mAP", "medium_mAP", "tail_mAP"]
    lines = [f"# Stage-2 loss ({split} split, image level, shared backbone)", "",
             f"Everything but the loss as in the stage-2 config; `{cfg.loss.name}` with its parameters "
             f"{json.dumps(cfg.loss.params)}, the others with their defaults.", "",
             "| loss | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in rows.items():
        cells = ["n/a" if row.get(c) is None else f"{row[c]:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(table: dict, split: str, view_only: dict) -> str:
    cols = ["mAP", "mAUROC", "head_mAP", "medium_mAP", "tail_mAP"] + [f"{k}_AP" for k in view_only]
    lines = [f"# Shared vs per-view backbones ({split} split, image level)", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, key in ROWS:
        cells = ["n/a" if table[key].get(c) is None else f"{table[key][c]:.3f}" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, classes in view_only.items():
        lines.append("")
        lines.append(f"{key.replace('_', ' ')} findings: {', '.join(classes)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
