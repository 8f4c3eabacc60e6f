"""The predictions CSV, which is also the CXR-LT submission format.

Columns: ``dicom_id``, ``study_id``, then one column per class named exactly as
the class, holding a probability in [0, 1]. One row per image; a study-level
model gives every image of a study the study's prediction. ``predict`` writes it
with :func:`write_predictions`, ``evaluate`` reads it with
:func:`read_predictions`, which checks every cell so that a truncated or
hand-edited file fails with one line naming the line and column instead of
producing quietly wrong metrics.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .io import atomic_path
from .name_lists import check_distinct_columns

ID_COLUMNS = ("dicom_id", "study_id")
HEADER_LINE = 1  # data row i (0-based) is on line i + 2 of the file


def write_predictions(path, dicom_ids, study_ids, classes, probs: np.ndarray) -> None:
    """Write one row per image atomically; ids are written as strings, probabilities at full precision."""
    classes = [str(c) for c in classes]
    probs = np.asarray(probs)
    dicom_ids = [str(i) for i in dicom_ids]
    study_ids = [str(i) for i in study_ids]
    if probs.shape != (len(dicom_ids), len(classes)) or len(study_ids) != len(dicom_ids):
        raise ValueError(f"probs {probs.shape} must be [{len(dicom_ids)} images, {len(classes)} classes] "
                         f"with {len(study_ids)} study ids")
    clash = sorted(set(classes) & set(ID_COLUMNS))
    if clash or len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique and differ from {ID_COLUMNS}: {clash or classes}")
    if probs.size and not (np.isfinite(probs).all() and probs.min() >= 0.0 and probs.max() <= 1.0):
        raise ValueError("probabilities must be finite and in [0, 1]")
    frame = pd.DataFrame(probs, columns=classes)
    frame.insert(0, "study_id", study_ids)
    frame.insert(0, "dicom_id", dicom_ids)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except FileNotFoundError:
        raise UserError(f"{path}: predictions file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read predictions CSV ({exc})") from None
    if not header:
        raise UserError(f"{path}: empty predictions CSV (expected header dicom_id,study_id,<classes>)")
    return [h.strip() for h in header]


def read_predictions(path, classes: list[str] | None = None) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Read and check a predictions CSV.

    Returns ``(ids, classes, probs)``: a frame with ``dicom_id`` and ``study_id`` as
    strings, the class names (``classes`` if given, in that order, else every
    column after the ids) and the probabilities as float64 [N, K].
    """
    path = Path(path)
    header = _header(path)
    for column in ID_COLUMNS:
        if column not in header:
            raise UserError(f"{path}: missing column '{column}' (header: {', '.join(header[:6])}...)")
    check_distinct_columns(header, path)
    available = [h for h in header if h not in ID_COLUMNS]
    if classes is None:
        classes = available
    else:
        classes = list(classes)
        missing = [c for c in classes if c not in header]
        if missing:
            raise UserError(f"{path}: no prediction column for class '{missing[0]}'"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if not classes:
        raise UserError(f"{path}: no class columns after dicom_id, study_id")

    try:
        with warnings.catch_warnings():
            # pandas only warns (and drops cells) when the first data line is longer than the header.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False,
                              encoding="utf-8-sig")
    except pd.errors.ParserWarning:
        raise UserError(f"{path}: line {HEADER_LINE + 1} has more fields than the header") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise UserError(f"{path}: cannot parse predictions CSV ({str(exc).splitlines()[0]})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    raw = raw.fillna("")  # a short row's missing fields: reported as empty cells below
    ids = raw[list(ID_COLUMNS)].apply(lambda col: col.str.strip()).astype(str)
    _check_ids(path, ids)
    probs = _parse_probabilities(path, raw, classes)
    return ids.reset_index(drop=True), classes, probs


def _check_ids(path: Path, ids: pd.DataFrame) -> None:
    for column in ID_COLUMNS:
        blank = np.flatnonzero((ids[column] == "").to_numpy())
        if blank.size:
            raise UserError(f"{path}: line {blank[0] + HEADER_LINE + 1}: empty {column}")
    duplicated = ids["dicom_id"].duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = np.flatnonzero(duplicated)[0]
        dicom_id = ids["dicom_id"].iloc[first]
        lines = np.flatnonzero((ids["dicom_id"] == dicom_id).to_numpy()) + HEADER_LINE + 1
        n_dup = int(ids["dicom_id"].duplicated().sum())
        raise UserError(f"{path}: duplicate dicom_id '{dicom_id}' on lines {lines[0]} and {lines[1]}"
                        + (f" ({n_dup} duplicate rows in all)" if n_dup > 1 else ""))


def _parse_probabilities(path: Path, raw: pd.DataFrame, classes: list[str]) -> np.ndarray:
    probs = np.empty((len(raw), len(classes)), dtype=np.float64)
    for k, name in enumerate(classes):
        text = raw[name].str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values) | (values < 0.0) | (values > 1.0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            cell = text.iloc[row]
            what = "empty probability" if cell == "" else f"'{cell}' is not a probability in [0, 1]"
            raise UserError(f"{path}: line {row + HEADER_LINE + 1}, column '{name}': {what}"
                            + (f" ({int(bad.sum())} bad cells in this column)" if bad.sum() > 1 else ""))
        probs[:, k] = values
    return probs
