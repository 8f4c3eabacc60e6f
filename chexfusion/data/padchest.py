"""PadChest's metadata and the CXR-LT 2026 challenge CSVs, read as CXR-LT tables.

CXR-LT 2026 publishes its labels as ``ImageID, StudyDate_DICOM, PatientID`` plus one 0/1 column per class, with
no study and no view, and with ``PatientID`` written as a float (``3.24E+38``) that merges patients. PadChest's
own metadata (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``) has what is missing: ``StudyID``, the
exact ``PatientID``, ``Projection`` and ``ImageDir`` (the numbered zip part holding the image). Joining the two on
``ImageID`` gives the project's CXR-LT table, so multi-view fusion applies to PadChest as to MIMIC.

Every id is read as text and never parsed: PadChest's ids are long digit strings that pandas would turn into
floats, and two such floats can be equal for different patients. ``Projection`` maps onto the three views by a
shipped table (``resources/padchest_projections.csv``): PA, AP and AP_horizontal are frontal, L lateral; COSTAL
(rib series), EXCLUDE and UNK are kept as unknown views, never dropped -- a challenge submission needs a row for
every image.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..resources import read_table
from .cxr_lt import CxrLtTable
from .external import _read_csv, _refuse_duplicates, _table, map_labels, normalize_label, source_labels
from .views import UNKNOWN, VIEWS

METADATA_COLUMNS = ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection")
CHALLENGE_ID_COLUMNS = ("ImageID", "StudyDate_DICOM", "PatientID")
PROJECTION_TABLE = "padchest_projections.csv"
CLASS_TABLE = "cxr_lt_2026_classes.csv"
TASKS = ("1", "2")
EXAMPLES = 3  # ids named in an error line
LABEL_VALUES = {"1": "1", "1.0": "1", "0": "0", "0.0": "0", "-1": "-1", "-1.0": "-1", "": ""}


@lru_cache(maxsize=None)
def projection_views() -> dict[str, str]:
    """PadChest ``Projection`` code -> frontal / lateral / unknown, from the shipped table."""
    return {row["Projection"]: row["view"] for row in read_table(PROJECTION_TABLE)}


def view_of_projection(code: str) -> str:
    """The view of a ``Projection`` value; a code the table lacks (or a blank) is unknown, as UNK is."""
    return projection_views().get(code.strip(), UNKNOWN)


def task_classes(task: str) -> list[str]:
    """The classes of CXR-LT 2026 Task 1 (30 known findings) or Task 2 (6 unseen), in the official order."""
    if task not in TASKS:
        raise UserError(f"CXR-LT 2026 has tasks 1 and 2, not '{task}'")
    return [row["class"] for row in read_table(CLASS_TABLE) if row["task"] == task]


# ---- PadChest's metadata ----------------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """The metadata CSV as text, one row per ImageID (a duplicate is refused), with a ``line`` column."""
    path = Path(path)
    frame, lines = _read_csv(path, METADATA_COLUMNS)
    _refuse_duplicates(path, frame["ImageID"], lines, "ImageID")
    frame["line"] = lines
    return frame


def _parse_label_list(text: str) -> list[str] | None:
    """PadChest ``Labels``: a Python list literal of names (``"['normal']"``); blank -> None (no labels)."""
    if not text.strip():
        return None
    try:
        names = ast.literal_eval(text)  # literals only: never code
    except (ValueError, SyntaxError):
        return []  # signals a bad cell to the caller
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        return []
    return [n for n in names if n.strip()]


def _label_values(path: Path, frame: pd.DataFrame, lines: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[N, L] presence (1 / 0, NaN for an unlabelled row) of every PadChest label the mapping table names."""
    labels = source_labels("padchest")
    column = {normalize_label(name): j for j, name in enumerate(labels)}
    codes, uniques = pd.factorize(frame["Labels"])
    per_unique = np.zeros((len(uniques), len(labels)), dtype=np.float32)
    for u, text in enumerate(uniques):
        names = _parse_label_list(text)
        if names is None:
            per_unique[u] = np.nan
            continue
        if not names and text.strip() not in ("[]", "['']"):
            line = lines[np.flatnonzero(codes == u)[0]]
            raise UserError(f"{path} line {line}, column 'Labels': not a list of names ({text[:60]!r})")
        for name in names:  # names the table does not map say nothing about the project's classes
            j = column.get(normalize_label(name))
            if j is not None:
                per_unique[u, j] = 1.0
    return per_unique[codes], labels


def read_padchest(path: str | os.PathLike, classes: list[str] | None = None) -> CxrLtTable:
    """PadChest's metadata alone as a labelled table: its ``Labels`` mapped onto classes (default: CXR-LT 2026's).

    ``fpath`` is ``<ImageDir>/<ImageID>`` (the image root holds the unzipped numbered folders). A row with blank
    ``Labels`` is unlabelled (NaN), for the noisy-student teacher to fill in.
    """
    path = Path(path)
    frame = read_metadata(path)
    if "Labels" not in frame:
        raise UserError(f"{path}: missing required column 'Labels'")
    lines = frame["line"].to_numpy()
    values, labels = _label_values(path, frame, lines)
    classes = list(classes) if classes is not None else task_classes("1") + task_classes("2")
    raw = map_labels("padchest", values, labels, classes)
    columns = {"dicom_id": frame["ImageID"], "subject_id": frame["PatientID"], "study_id": frame["StudyID"],
               "ViewPosition": frame["Projection"], "fpath": frame["ImageDir"] + "/" + frame["ImageID"]}
    views = [view_of_projection(p) for p in frame["Projection"]]
    return _table(path, columns, views, classes, raw, lines)


# ---- the challenge's CSV joined to the metadata -----------------------------------------------------------


@dataclass
class Conversion:
    """A challenge CSV joined to PadChest's metadata: the table and what happened to every row."""

    table: CxrLtTable
    removed: int
    unmatched: list[str]
    projections: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        frame = self.table.frame
        counts = frame["view"].value_counts()
        return {"images": len(frame), "studies": int(frame["study_id"].nunique()),
                "views": {v: int(counts.get(v, 0)) for v in VIEWS}, "removed": self.removed,
                "unmatched": len(self.unmatched)}


def read_removal(path: str | os.PathLike) -> set[str]:
    """``Removal.csv``: the ImageIDs the challenge says must not be trained on."""
    path = Path(path)
    frame, _ = _read_csv(path, ("ImageID",))
    return set(frame["ImageID"].tolist())


def _label_columns(path: Path, frame: pd.DataFrame, lines: np.ndarray) -> list[str]:
    """The class columns (every column but the ids), each value checked to be 1, 0, -1 or blank."""
    classes = [c for c in frame.columns if c not in CHALLENGE_ID_COLUMNS]
    for name in classes:
        bad = np.flatnonzero(~frame[name].isin(list(LABEL_VALUES)).to_numpy())
        if len(bad):
            raise UserError(f"{path} line {lines[bad[0]]}, column '{name}': label value "
                            f"'{frame[name].iat[bad[0]]}' is not 1, 0, -1 or blank")
        frame[name] = frame[name].map(LABEL_VALUES)
    return classes


def _unmatched_error(path: Path, metadata: Path, ids: list[str]) -> UserError:
    first = ", ".join(ids[:EXAMPLES])
    return UserError(f"{path}: {len(ids)} ImageID{'s' if len(ids) != 1 else ''} not in {metadata} (first: {first}); "
                     "check the metadata file, or add --allow-unmatched to keep them as one-image studies of "
                     "unknown view")


def join_challenge_csv(labels_csv: str | os.PathLike, metadata_csv: str | os.PathLike,
                       removal_csv: str | os.PathLike | None = None, allow_unmatched: bool = False,
                       metadata: pd.DataFrame | None = None) -> Conversion:
    """A CXR-LT 2026 CSV (training, or the unlabelled dev / test ones) as the project's CXR-LT table.

    ``dicom_id`` = ImageID, ``study_id`` = PadChest's StudyID, ``subject_id`` = its PatientID (the exact string;
    the challenge's float form is never used), ``ViewPosition`` = Projection, ``fpath`` = ``<ImageDir>/<ImageID>``.
    Rows named by ``removal_csv`` are dropped and counted. An ImageID the metadata lacks is an error unless
    ``allow_unmatched``: then it is its own study, of unknown view and subject, with ``fpath`` = ImageID.
    """
    path, metadata_path = Path(labels_csv), Path(metadata_csv)
    frame, lines = _read_csv(path, ("ImageID",))
    _refuse_duplicates(path, frame["ImageID"], lines, "ImageID")
    classes = _label_columns(path, frame, lines)
    removal = read_removal(removal_csv) if removal_csv is not None else set()
    keep = ~frame["ImageID"].isin(removal).to_numpy()
    frame, lines = frame[keep].reset_index(drop=True), lines[keep]
    meta = read_metadata(metadata_path) if metadata is None else metadata
    joined = frame[["ImageID"]].merge(meta, on="ImageID", how="left", validate="one_to_one")
    matched = joined["line"].notna().to_numpy()
    unmatched = frame["ImageID"][~matched].tolist()
    if unmatched and not allow_unmatched:
        raise _unmatched_error(path, metadata_path, unmatched)
    ids = frame["ImageID"]
    fpath = (joined["ImageDir"].fillna("") + "/" + ids).where(matched, ids)
    columns = {"dicom_id": ids, "subject_id": joined["PatientID"].fillna(""),
               "study_id": joined["StudyID"].where(matched, ids), "ViewPosition": joined["Projection"].fillna(""),
               "fpath": fpath}
    projection = joined["Projection"].fillna("")
    views = [view_of_projection(p) for p in projection]
    raw = frame[classes].replace("", "nan").astype(np.float32).to_numpy() if classes else np.zeros((len(frame), 0))
    table = _table(path, columns, views, classes, raw, lines)
    if not classes:
        table.raw_labels = None
    counts = projection.where(matched, "(not in the metadata)").replace("", "(blank)").value_counts()
    return Conversion(table, int((~keep).sum()), unmatched, {str(k): int(n) for k, n in counts.items()})


def read_challenge_labels(path: str | os.PathLike, classes: list[str]) -> CxrLtTable:
    """A labelled challenge-layout CSV alone (``ImageID`` + classes), for scoring: each image its own row.

    Scoring needs no study or image file, so no metadata is joined: ``study_id`` and ``fpath`` are the ImageID.
    """
    path = Path(path)
    frame, lines = _read_csv(path, ("ImageID",))
    _refuse_duplicates(path, frame["ImageID"], lines, "ImageID")
    given = _label_columns(path, frame, lines)
    missing = [c for c in classes if c not in given]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{path}: no label column for class '{missing[0]}'{more}")
    raw = frame[classes].replace("", "nan").astype(np.float32).to_numpy()
    ids = frame["ImageID"]
    columns = {"dicom_id": ids, "study_id": ids, "fpath": ids}
    return _table(path, columns, [UNKNOWN] * len(ids), list(classes), raw, lines)
