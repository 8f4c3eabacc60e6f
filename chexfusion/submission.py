"""CXR-LT 2026 submissions: the CSV the challenge's server takes, and scoring one against labels.

A submission is ``ImageID`` then the task's classes in the official order (Task 1: the 30 known findings; Task 2:
the 6 unseen ones), one row per image of the task's test CSV, each cell a probability. The server rejects any
other shape, so ``predict --submission`` writes exactly that and ``evaluate --task`` checks a file the way the
server would before scoring it, naming what is missing, extra or out of order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .io import atomic_path

SUBMISSIONS = {"cxr-lt-2026-task1": "1", "cxr-lt-2026-task2": "2"}  # predict --submission -> task
EVALUATION_TASKS = {"cxr-lt-2026-1": "1", "cxr-lt-2026-2": "2"}  # evaluate --task -> task
ID_COLUMN = "ImageID"
SHOW = 3


def _names(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names[:SHOW]) + (f" (and {len(names) - SHOW} more)" if len(names) > SHOW else "")


def submission_classes(task: str) -> list[str]:
    from .data.padchest import task_classes

    return task_classes(task)


def write_submission(path, image_ids, classes: list[str], probs: np.ndarray, task: str) -> None:
    """``ImageID`` + the task's classes in the official order, from a prediction over ``classes``."""
    wanted = submission_classes(task)
    missing = [c for c in wanted if c not in classes]
    if missing:
        raise UserError(f"the model scores no {_names(missing)}, which Task {task} needs (a text-query run scores "
                        "unseen names: chexfusion predict ... --classes)")
    columns = [classes.index(c) for c in wanted]
    frame = pd.DataFrame(np.asarray(probs)[:, columns], columns=wanted)
    frame.insert(0, ID_COLUMN, [str(i) for i in image_ids])
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def check_header(path: Path, header: list[str], task: str) -> None:
    """The header must be ``ImageID`` then exactly the task's classes in order; say precisely what is off."""
    wanted = submission_classes(task)
    if not header or header[0] != ID_COLUMN:
        raise UserError(f"{path}: the first column must be '{ID_COLUMN}' (found '{header[0] if header else ''}')")
    given = header[1:]
    extra = [c for c in given if c not in wanted]
    if extra:
        raise UserError(f"{path}: column {_names(extra)} is not a class of CXR-LT 2026 Task {task}")
    missing = [c for c in wanted if c not in given]
    if missing:
        raise UserError(f"{path}: no column for {len(missing)} class(es) of Task {task}: {_names(missing)}")
    twice = sorted({c for c in given if given.count(c) > 1})
    if twice:
        raise UserError(f"{path}: column {_names(twice)} appears twice")
    if given != wanted:
        first = next(k for k, (a, b) in enumerate(zip(given, wanted)) if a != b)
        raise UserError(f"{path}: classes out of the official order: column {first + 2} is '{given[first]}', "
                        f"expected '{wanted[first]}'")


def read_submission(path, task: str) -> tuple[list[str], np.ndarray]:
    """(ImageIDs, probabilities [N, K]) of a submission, checked as the server would."""
    from .predictions import _parse_probabilities

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: submission file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a valid CSV file ({str(exc).strip().splitlines()[0]})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    check_header(path, list(raw.columns), task)
    ids = raw[ID_COLUMN].str.strip()
    blank = np.flatnonzero((ids == "").to_numpy())
    if len(blank):
        raise UserError(f"{path}: line {blank[0] + 2}: empty {ID_COLUMN}")
    return ids.tolist(), _parse_probabilities(path, raw, submission_classes(task))


def read_task_labels(path, task: str):
    """The task's labels, from a challenge-layout CSV (``ImageID`` + classes) or a CXR-LT CSV (``dicom_id`` ...)."""
    from .data.cxr_lt import read_cxr_lt
    from .data.padchest import read_challenge_labels

    path = Path(path)
    wanted = submission_classes(task)
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns
    except (OSError, ValueError, UnicodeDecodeError):
        header = []  # the reader below says what is wrong with the file
    if ID_COLUMN in [str(c).strip() for c in header]:
        return read_challenge_labels(path, wanted)
    return read_cxr_lt(path, classes=wanted, require_labels=True)


def load_task_evaluation(pred_path, labels_path, task: str, policy):
    """A submission and the task's labels as the aligned arrays ``evaluate`` scores."""
    from .evaluate import Evaluation, align_ids

    image_ids, probs = read_submission(pred_path, task)
    table = read_task_labels(labels_path, task)
    if len(table) == 0:
        raise UserError(f"{labels_path}: no rows to evaluate")
    rows = align_ids(image_ids, table.frame["dicom_id"].tolist(), pred_path, labels_path)
    targets, mask = table.targets(policy)
    frame = table.frame  # a study per image where the labels name no studies (the challenge's own layout)
    study_ids = (frame["study_id"] if "study_id" in frame else frame["dicom_id"]).astype(str).to_numpy()
    return Evaluation(list(table.classes), np.asarray(targets, dtype=np.float64), probs[rows], np.asarray(mask) != 0,
                      [], study_ids)
