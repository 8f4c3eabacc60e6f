"""``chexfusion ensemble``: one run folder that predicts the mean of several runs' probabilities.

The folder holds copies of its members (``members/<i>/``), so it is as self-contained as any run, and predict,
evaluate (through predict's CSV), calibrate, the web demo and the Python API take it like any run
(``inference/ensemble.py``). ``--per-class`` picks, for each class, the subset of members whose mean scores the
best AP on a labelled validation CSV (ties go to the larger subset; a class without a validation positive keeps
every member); without it every class is the mean of all members.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import atomic_folder
from .name_lists import parse_name_list
from .run_folder import read_run_info, run_kind, write_run_info

MAX_SUBSET_MEMBERS = 6  # per class, every non-empty subset of members is tried: 2^6 - 1 = 63 means


def add_arguments(parser) -> None:
    parser.add_argument("--runs", required=True, metavar="R1,R2",
                        help="stage-1 or stage-2 run folders with the same classes (comma-separated, two or more)")
    parser.add_argument("--out", required=True, help="the ensemble run folder to write (must not exist)")
    parser.add_argument("--per-class", action="store_true",
                        help="per class, the members whose mean has the best validation AP (needs --val-csv)")
    parser.add_argument("--val-csv", help="labelled validation CSV for --per-class")
    parser.add_argument("--image-root", help="folder --val-csv's fpath values are relative to")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... for --per-class (default: cuda if available)")


def run(args) -> int:
    runs = [Path(p) for p in parse_name_list(args.runs, "--runs")]
    validation = None
    if args.per_class:
        if not args.val_csv or not args.image_root:
            raise UserError("--per-class needs --val-csv and --image-root (the labelled validation images)")
        validation = (Path(args.val_csv), Path(args.image_root), args.device)
    info = make_ensemble(runs, Path(args.out), validation)
    how = "per class, the best validation subset" if args.per_class else "the mean of all members"
    print(f"wrote ensemble {args.out}: {len(runs)} members, {len(info['classes'])} classes, {how}")
    return 0


def make_ensemble(runs: list[Path], out: Path, validation: tuple | None = None) -> dict:
    """Write the ensemble folder ``out`` of ``runs``; ``validation`` = (csv, image_root, device) picks members per
    class. Returns its run.json."""
    if len(runs) < 2:
        raise UserError("--runs: an ensemble needs at least two runs")
    if out.exists():
        raise UserError(f"--out {out}: already exists (choose a new folder)")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: its folder {out.parent} does not exist")
    infos = [member_info(run) for run in runs]
    for run, member in zip(runs[1:], infos[1:]):
        if member["classes"] != infos[0]["classes"]:
            raise UserError(f"{run}: its classes differ from {runs[0]}'s (same names in the same order needed)")
    info = {"kind": "ensemble", "name": out.name, "classes": infos[0]["classes"],
            "train_prevalence": infos[0]["train_prevalence"], "combine": "mean",
            "members": [{"path": f"members/{i}", "source": str(run), "kind": member["kind"]}
                        for i, (run, member) in enumerate(zip(runs, infos))]}
    if validation is not None:
        info.update(combine="per_class", **choose_members(runs, info["classes"], *validation))
    with atomic_folder(out) as tmp:
        for i, run in enumerate(runs):
            shutil.copytree(run, tmp / "members" / str(i))
        write_run_info(tmp, info)
        from .inference.ensemble import load_ensemble_run

        load_ensemble_run(tmp)  # the folder is checked as any loader will check it, before it is in place
    return info


def member_info(run: Path) -> dict:
    if run_kind(run) not in ("stage1", "stage2"):
        raise UserError(f"{run}: an ensemble member must be a stage-1 or stage-2 run")
    return read_run_info(run)


def choose_members(runs: list[Path], classes: list[str], csv: Path, image_root: Path, device) -> dict:
    """``{"choice": {class: [member indices]}, "validation_AP": {class: AP of that choice}, "validation_csv"}``."""
    from sklearn.metrics import average_precision_score

    from .data.cxr_lt import read_cxr_lt
    from .data.labels import LabelPolicy
    from .inference import TableOptions, load_predictor
    from .inference.ensemble import common_rows, positions

    if len(runs) > MAX_SUBSET_MEMBERS:
        raise UserError(f"--per-class tries every subset of members: at most {MAX_SUBSET_MEMBERS} runs")
    table = read_cxr_lt(csv, classes=classes, require_labels=True)
    results = [load_predictor(run, device).predict_table(table, image_root, TableOptions(progress=False))
               for run in runs]
    rows = common_rows(results)
    probs = np.stack([r.probs[positions(r.rows, rows)] for r in results])
    targets, mask = table.targets(LabelPolicy())
    subsets = [list(s) for n in range(len(runs), 0, -1) for s in itertools.combinations(range(len(runs)), n)]
    choice, scores = {}, {}
    for k, name in enumerate(classes):
        valid = mask[rows, k] != 0
        y = targets[rows, k][valid]
        if y.sum() == 0:
            choice[name], scores[name] = list(range(len(runs))), None
            continue
        aps = [average_precision_score(y, probs[s][:, valid, k].mean(axis=0)) for s in subsets]
        best = int(np.argmax(aps))  # the first maximum: subsets run from the largest down
        choice[name], scores[name] = subsets[best], float(aps[best])
    return {"choice": choice, "validation_AP": scores, "validation_csv": str(csv)}
