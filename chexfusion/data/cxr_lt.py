"""Reading a CXR-LT CSV (one row per image) into a validated table.

The CSV is the contract between the user's data and every later step, so it is
checked once, here, and every problem is reported as one line naming the file,
the line (as a spreadsheet shows it: the header is line 1) and the column.
Everything is read as text first (``dtype=str``) so an id like ``50414267`` is
never turned into ``5.0414267e7`` and a stray ``"yes"`` in a label column is
refused instead of silently becoming NaN. Label columns are parsed column by
column over their few distinct spellings, which keeps a 377k-row file to a
couple of seconds.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..name_lists import check_distinct_columns
from .labels import LabelPolicy, apply_label_policy
from .views import view_of_row

METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath")
REQUIRED_COLUMNS = ("dicom_id", "study_id", "fpath")
LABEL_VALUES = (1.0, 0.0, -1.0)
HEADER_LINE = 1


@dataclass
class CxrLtTable:
    """One row per image in the CSV's order, the class columns and their raw values."""

    path: Path
    frame: pd.DataFrame
    classes: list[str]
    raw_labels: np.ndarray | None  # float32 [N, C]: 1, 0, -1, NaN (blank); None without label columns
    lines: np.ndarray | None = field(default=None, repr=False)  # CSV line of each row, for messages

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def has_labels(self) -> bool:
        return self.raw_labels is not None

    def line_of(self, row: int) -> int:
        """The CSV line a row came from (header = line 1)."""
        return int(self.lines[row]) if self.lines is not None else int(row) + HEADER_LINE + 1

    def _require_labels(self) -> np.ndarray:
        if self.raw_labels is None:
            raise UserError(f"{self.path}: has no label columns")
        return self.raw_labels

    def targets(self, policy: LabelPolicy | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(targets, mask) float32 [N, C] under a label policy (default: -1 and blank are negatives)."""
        return apply_label_policy(self._require_labels(), policy or LabelPolicy())

    def prevalence(self, policy: LabelPolicy | None = None) -> np.ndarray:
        """Fraction of positives per class among the entries the policy does not ignore (0 when none)."""
        targets, mask = self.targets(policy)
        counted = mask.sum(axis=0, dtype=np.float64)
        positives = (targets * mask).sum(axis=0, dtype=np.float64)
        return np.divide(positives, counted, out=np.zeros_like(counted), where=counted > 0)

    def positives(self) -> np.ndarray:
        """Number of ``1`` entries per class."""
        return (self._require_labels() == 1.0).sum(axis=0)

    def uncertain_counts(self) -> np.ndarray:
        """Number of ``-1`` entries per class."""
        return (self._require_labels() == -1.0).sum(axis=0)

    def blank_counts(self) -> np.ndarray:
        """Number of blank entries per class."""
        return np.isnan(self._require_labels()).sum(axis=0)

    def image_paths(self, image_root: str | os.PathLike) -> list[str]:
        """Each row's image file: ``fpath`` joined to the image root (an absolute fpath stays as is)."""
        root = os.fspath(image_root)
        return [os.path.join(root, p) for p in self.frame["fpath"].tolist()]

    def select(self, rows) -> "CxrLtTable":
        """A table of some rows only (e.g. one split), in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        return CxrLtTable(
            path=self.path,
            frame=self.frame.iloc[rows].reset_index(drop=True),
            classes=list(self.classes),
            raw_labels=None if self.raw_labels is None else self.raw_labels[rows],
            lines=None if self.lines is None else self.lines[rows],
        )


def _scan_records(path: Path) -> tuple[list[str], np.ndarray]:
    """The header and the first line of every non-blank record; refuse rows with the wrong number of fields.

    pandas silently pads short rows and, with ``index_col=False``, truncates long
    ones, so the field count is checked here with the csv module, which also
    gives true line numbers when a quoted field spans several lines.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise UserError(f"{path}: empty file (no header line)")
            width = len(header)
            starts: list[int] = []
            previous_end = reader.line_num
            for record in reader:
                if record and (len(record) > 1 or record[0].strip()):  # pandas skips blank lines too
                    if len(record) != width:
                        raise UserError(
                            f"{path} line {previous_end + 1}: {len(record)} fields where the header has {width}"
                        )
                    starts.append(previous_end + 1)
                previous_end = reader.line_num
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a valid CSV file ({exc})") from None
    names = [name.strip() for name in header]
    for position, name in enumerate(names, start=1):
        if not name:
            raise UserError(f"{path}: column {position} has an empty name in the header (saved with an index?)")
    check_distinct_columns(names, path)
    return names, np.asarray(starts, dtype=np.int64)


def _read_frame(path: Path, names: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a valid CSV file ({first})") from None
    frame.columns = names
    return frame


def _check_ids(path: Path, frame: pd.DataFrame, lines: np.ndarray) -> None:
    for column in REQUIRED_COLUMNS:
        empty = np.flatnonzero((frame[column] == "").to_numpy())
        if len(empty):
            raise UserError(f"{path} line {lines[empty[0]]}: empty '{column}'")
    repeated = np.flatnonzero(frame["dicom_id"].duplicated(keep="first").to_numpy())
    if len(repeated):
        second = repeated[0]
        ident = frame["dicom_id"].iat[second]
        first = np.flatnonzero((frame["dicom_id"] == ident).to_numpy())[0]
        raise UserError(f"{path}: duplicate dicom_id '{ident}' on line {lines[first]} and line {lines[second]}")
    if (frame["subject_id"] != "").any():
        subjects_per_study = frame.groupby("study_id", sort=False)["subject_id"].nunique()
        mixed = subjects_per_study[subjects_per_study > 1]
        if len(mixed):
            study = mixed.index[0]
            rows = np.flatnonzero((frame["study_id"] == study).to_numpy())
            subjects = frame["subject_id"].to_numpy()[rows]
            other = int(np.argmax(subjects != subjects[0]))
            raise UserError(
                f"{path}: study_id '{study}' has two subject_ids, '{subjects[0]}' on line {lines[rows[0]]} "
                f"and '{subjects[other]}' on line {lines[rows[other]]}"
            )


def _views(frame: pd.DataFrame) -> np.ndarray:
    """View per row, computed once per distinct (ViewPosition, CodeMeaning) pair."""
    pairs = frame["ViewPosition"] + "\x00" + frame["ViewCodeSequence_CodeMeaning"]
    codes, uniques = pd.factorize(pairs)
    mapped = np.array([view_of_row(*pair.split("\x00", 1)) for pair in uniques], dtype=object)
    return mapped[codes] if len(uniques) else np.array([], dtype=object)


def _label_value(text: str) -> float | None:
    text = text.strip()
    if not text:
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value in LABEL_VALUES else None


def _parse_labels(path: Path, frame: pd.DataFrame, classes: list[str], lines: np.ndarray) -> np.ndarray:
    raw = np.empty((len(frame), len(classes)), dtype=np.float32)
    first_bad: tuple[int, str] | None = None
    for j, name in enumerate(classes):
        codes, uniques = pd.factorize(frame[name])
        parsed = [_label_value(u) for u in uniques]
        invalid = [k for k, v in enumerate(parsed) if v is None]
        if invalid:
            row = int(np.flatnonzero(np.isin(codes, invalid))[0])
            if first_bad is None or row < first_bad[0]:
                first_bad = (row, name)
        values = np.array([np.nan if v is None else v for v in parsed], dtype=np.float32)
        raw[:, j] = values[codes]
    if first_bad is not None:
        row, name = first_bad
        raise UserError(
            f"{path} line {lines[row]}, column '{name}': label value '{frame[name].iat[row]}' "
            "is not 1, 0, -1 or blank"
        )
    return raw


def read_cxr_lt(
    path: str | os.PathLike,
    classes: list[str] | None = None,
    require_labels: bool = False,
    extra_metadata: tuple[str, ...] = (),
) -> CxrLtTable:
    """Read and validate a CXR-LT CSV.

    ``classes`` names the label columns to use (others are ignored); without it,
    every column that is neither metadata nor in ``extra_metadata`` is a class,
    in header order. ``require_labels`` refuses a CSV without label columns.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}")
    names, lines = _scan_records(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise UserError(f"{path}: missing required column '{missing[0]}'")
    metadata = set(METADATA_COLUMNS) | set(extra_metadata)
    if classes is None:
        classes = [n for n in names if n not in metadata]
    else:
        classes = list(classes)
        absent = [c for c in classes if c not in names]
        if absent:
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            raise UserError(f"{path}: missing class column '{absent[0]}'{more}")
        if len(set(classes)) != len(classes):
            raise UserError(f"{path}: the class list names a column twice")
    if require_labels and not classes:
        raise UserError(f"{path}: no label columns (a labelled CSV is needed here)")

    frame = _read_frame(path, names)
    if frame.empty:  # nothing to train on or predict: a truncated export, not a result of 0 rows
        raise UserError(f"{path}: a header and no rows (no images listed)")
    if len(frame) != len(lines):  # a CSV dialect quirk the two readers see differently
        lines = np.arange(len(frame), dtype=np.int64) + HEADER_LINE + 1

    kept = [c for c in names if c in metadata]
    out = pd.DataFrame({c: frame[c].str.strip() for c in kept})
    for column in METADATA_COLUMNS:
        if column not in out:
            out[column] = pd.Series([""] * len(frame), dtype="str")
    _check_ids(path, out, lines)
    raw = _parse_labels(path, frame, classes, lines) if classes else None
    out["view"] = pd.Series(_views(out), dtype="str")
    order = list(METADATA_COLUMNS) + [c for c in kept if c not in METADATA_COLUMNS] + ["view"]
    return CxrLtTable(path=path, frame=out[order], classes=classes, raw_labels=raw, lines=lines)
