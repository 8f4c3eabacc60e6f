"""Readers for the external chest X-ray sets used for noisy-student self-training.

NIH ChestX-ray14, CheXpert and VinDr-CXR each come with their own CSV layout
and their own label names. Each reader returns the same
:class:`~chexfusion.data.cxr_lt.CxrLtTable` the CXR-LT reader does, over the
*project's* class list, so everything downstream (``inspect``, image datasets,
the pseudo-labeller) treats them alike.

Label names are mapped by a table shipped with the package
(``resources/external_label_map.csv``), not by code. Each row says what a
source label tells about one project class::

    source, source_label, class, if_present, if_absent

``if_present`` / ``if_absent`` are the class's value when the source label is
present / absent (1, 0 or blank = says nothing). ``1,0`` is "the same finding";
``1,`` is "implies" (VinDr marks Lung Opacity only where no more specific label
fits, so its absence is no negative); ``,0`` is "part of" (VinDr's
``Nodule/Mass`` cannot say which of the two it is, but its absence rules out
both); ``0,`` is "rules out" (a finding rules out Normal). The source label
``*`` stands for "any finding of the source" (every label but its no-finding
label). A row with no class lists a label the source has but the project does
not: every label a source can use is listed, so an unknown name in a CSV is a
typo to report, not a finding to drop silently. PadChest is the exception: its
~190 report-derived names are lists, not a closed column set, so its rows name
only the labels that map onto a CXR-LT 2026 class (any other name says nothing
about them; each such class is 0 when none of its labels is in the list).
Names match case- and space-insensitively.

Classes a source says nothing about stay NaN ("unknown"), never 0: the
noisy-student teacher fills them in. A source label that is itself uncertain
(CheXpert ``-1``; VinDr readers who disagree) gives ``-1`` to the classes it
would make positive; a CheXpert blank ("not mentioned") gives NaN. Both are
then the label policy's job (:mod:`chexfusion.data.labels` for plain training,
``noisy_student.uncertain_label`` for self-training, where a blank is filled by
the teacher). When several rows speak about one class, the most informative
value wins: 1, then -1, then 0.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..resources import read_table
from .cxr_lt import METADATA_COLUMNS, CxrLtTable
from .views import FRONTAL, LATERAL, view_of

EXTERNAL_FORMATS = ("nih", "chexpert", "vindr", "padchest")  # padchest: its reader is in padchest.py
AGREEMENT_RULES = ("any", "majority", "all")
ANY_FINDING = "*"
# Each format's own "nothing found" label (not a finding: it does not count for ``*``).
NO_FINDING_LABEL = {"nih": "No Finding", "chexpert": "No Finding", "vindr": "No finding", "padchest": "normal"}
LABEL_MAP_TABLE = "external_label_map.csv"
HEADER_LINE = 1


# ---- the label-name table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRule:
    """One row of the mapping table: what ``source_label`` tells about ``project_class``."""

    source_label: str
    project_class: str
    if_present: float  # 1, 0 or NaN (says nothing)
    if_absent: float


def _cell(text: str) -> float:
    return float(text) if text.strip() else math.nan


def normalize_label(name: str) -> str:
    """The form label names are compared in: case-folded, inner spaces collapsed."""
    return " ".join(str(name).split()).casefold()


@lru_cache(maxsize=None)
def _table_rows(source: str) -> tuple[dict, ...]:
    if source not in EXTERNAL_FORMATS:
        raise UserError(f"unknown external format '{source}' (known: {', '.join(EXTERNAL_FORMATS)})")
    return tuple(row for row in read_table(LABEL_MAP_TABLE) if row["source"] == source)


def source_labels(source: str) -> list[str]:
    """Every label name the source uses, in table order (without ``*``)."""
    seen: dict[str, None] = {}
    for row in _table_rows(source):
        if row["source_label"] != ANY_FINDING:
            seen.setdefault(row["source_label"], None)
    return list(seen)


def label_rules(source: str) -> list[LabelRule]:
    """The table's rows for ``source`` that map onto a project class."""
    return [LabelRule(r["source_label"], r["class"], _cell(r["if_present"]), _cell(r["if_absent"]))
            for r in _table_rows(source) if r["class"]]


def labelled_classes(source: str) -> list[str]:
    """Project classes the source can mark positive: the default class list of its reader."""
    out: dict[str, None] = {}
    for rule in label_rules(source):
        if rule.if_present == 1.0:
            out.setdefault(rule.project_class, None)
    return list(out)


def known_classes(source: str, classes: list[str]) -> list[str]:
    """The classes of ``classes`` the source says anything about (the rest are left to the teacher)."""
    mentioned = {rule.project_class for rule in label_rules(source)}
    return [c for c in classes if c in mentioned]


def _vocabulary(source: str) -> dict[str, str]:
    return {normalize_label(name): name for name in source_labels(source)}


# ---- source values -> project classes ----------------------------------------------------------------------

def _rank(values: np.ndarray) -> np.ndarray:
    """How much a value says, to choose between rows that speak about the same class: 1 > -1 > 0 > unknown."""
    return np.select([values == 1.0, values == -1.0, values == 0.0], [3, 2, 1], 0).astype(np.int8)


def _rule_values(observed: np.ndarray, rule: LabelRule) -> np.ndarray:
    """A class's values from one source column (1 present, 0 absent, -1 uncertain, NaN not stated)."""
    out = np.full(observed.shape, np.nan, dtype=np.float32)
    out[observed == 1.0] = rule.if_present
    out[observed == 0.0] = rule.if_absent
    if rule.if_present == 1.0:
        out[observed == -1.0] = -1.0  # an uncertain finding is an uncertain positive of what it would imply
    return out


def _any_finding(values: np.ndarray, labels: list[str], source: str) -> np.ndarray:
    """The ``*`` column: 1 if a finding is present, 0 if every finding is absent, else NaN."""
    findings = [j for j, name in enumerate(labels) if name != NO_FINDING_LABEL[source]]
    block = values[:, findings]
    out = np.full(len(values), np.nan, dtype=np.float32)
    out[(block == 0.0).all(axis=1)] = 0.0
    out[(block == 1.0).any(axis=1)] = 1.0
    return out


def map_labels(source: str, values: np.ndarray, labels: list[str], classes: list[str]) -> np.ndarray:
    """Source label values [N, L] (1 / 0 / -1 / NaN per ``labels``) -> project raw labels [N, K], NaN = unknown."""
    values = np.asarray(values, dtype=np.float32)
    column = {name: j for j, name in enumerate(labels)}
    class_index = {c: k for k, c in enumerate(classes)}
    out = np.full((len(values), len(classes)), np.nan, dtype=np.float32)
    rank = np.zeros(out.shape, dtype=np.int8)
    any_finding = None
    for rule in label_rules(source):
        k = class_index.get(rule.project_class)
        if k is None:
            continue
        if rule.source_label == ANY_FINDING:
            if any_finding is None:
                any_finding = _any_finding(values, labels, source)
            observed = any_finding
        elif rule.source_label in column:
            observed = values[:, column[rule.source_label]]
        else:
            continue  # a label this file has no column for (CheXpert files may leave some out)
        mapped = _rule_values(observed, rule)
        mapped_rank = _rank(mapped)
        better = mapped_rank > rank[:, k]
        out[better, k] = mapped[better]
        rank[better, k] = mapped_rank[better]
    return out


# ---- CSV plumbing --------------------------------------------------------------------------------------------


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """The CSV as text (ids stay ids), stripped, with each row's line number (header = line 1)."""
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, encoding="utf-8-sig",
                            skip_blank_lines=True)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a valid CSV file ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing required column '{missing[0]}'")
    frame = frame.apply(lambda column: column.str.strip())
    lines = np.arange(len(frame), dtype=np.int64) + HEADER_LINE + 1
    for column in required:
        empty = np.flatnonzero((frame[column] == "").to_numpy())
        if len(empty):
            raise UserError(f"{path} line {lines[empty[0]]}: empty '{column}'")
    return frame, lines


def _refuse_duplicates(path: Path, ids: pd.Series, lines: np.ndarray, column: str) -> None:
    repeated = np.flatnonzero(ids.duplicated(keep="first").to_numpy())
    if len(repeated):
        ident = ids.iat[repeated[0]]
        first = np.flatnonzero((ids == ident).to_numpy())[0]
        raise UserError(f"{path}: duplicate {column} '{ident}' on line {lines[first]} and line {lines[repeated[0]]}")


def _table(path: Path, columns: dict[str, list | pd.Series], views, classes: list[str], raw: np.ndarray,
           lines: np.ndarray) -> CxrLtTable:
    n = len(lines)
    frame = pd.DataFrame({name: pd.Series(list(columns.get(name, [""] * n)), dtype="str") for name in METADATA_COLUMNS})
    frame["view"] = pd.Series(list(views), dtype="str")
    return CxrLtTable(path=path, frame=frame, classes=list(classes), raw_labels=raw.astype(np.float32), lines=lines)


def _class_list(source: str, classes: list[str] | None) -> list[str]:
    if classes is None:
        return labelled_classes(source)
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise UserError("the class list names a class twice")
    return classes


# ---- NIH ChestX-ray14 --------------------------------------------------------------------------------------

NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
NIH_IMAGE_FOLDER = "images"  # every images_NNN.tar.gz of the release unpacks into images/


def read_nih(path: str | os.PathLike, classes: list[str] | None = None) -> CxrLtTable:
    """NIH ``Data_Entry_2017.csv``: ``Finding Labels`` joined by ``|`` or ``No Finding``; one image per visit.

    ``fpath`` is ``images/<Image Index>`` (the image root is the folder the release was unpacked into);
    ``study_id`` is ``<Patient ID>_<Follow-up #>``.
    """
    path = Path(path)
    classes = _class_list("nih", classes)
    frame, lines = _read_csv(path, NIH_COLUMNS)
    _refuse_duplicates(path, frame["Image Index"], lines, "Image Index")
    labels = source_labels("nih")
    vocabulary = _vocabulary("nih")
    no_finding = NO_FINDING_LABEL["nih"]
    codes, uniques = pd.factorize(frame["Finding Labels"])
    per_unique = np.zeros((len(uniques), len(labels)), dtype=np.float32)  # every label read: absent unless named
    for u, text in enumerate(uniques):
        names = [vocabulary.get(normalize_label(part)) for part in text.split("|")]
        line = lines[np.flatnonzero(codes == u)[0]]
        if None in names:
            bad = text.split("|")[names.index(None)].strip()
            raise UserError(f"{path} line {line}, column 'Finding Labels': unknown NIH label '{bad}'")
        if no_finding in names and len(names) > 1:
            raise UserError(f"{path} line {line}, column 'Finding Labels': '{no_finding}' together with findings")
        for name in names:
            per_unique[u, labels.index(name)] = 1.0
    raw = map_labels("nih", per_unique[codes], labels, classes)
    patient = frame["Patient ID"]
    if "Follow-up #" in frame:
        study = patient + "_" + frame["Follow-up #"]
    else:
        study = frame["Image Index"].str.rsplit(".", n=1).str[0]
    position = frame["View Position"]
    columns = {"dicom_id": frame["Image Index"], "subject_id": patient, "study_id": study,
               "ViewPosition": position, "fpath": NIH_IMAGE_FOLDER + "/" + frame["Image Index"]}
    return _table(path, columns, [view_of(p) for p in position], classes, raw, lines)


# ---- CheXpert --------------------------------------------------------------------------------------------------

CHEXPERT_METADATA = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
CHEXPERT_PATH = re.compile(r"(?:^|/)(patient[^/]+)/(study[^/]+)/[^/]+$")
CHEXPERT_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": math.nan}


def _chexpert_view(frontal_lateral: str, ap_pa: str, image: str) -> str:
    text = frontal_lateral.casefold()
    if not text:  # an export without the column: the file name says it (view1_frontal.jpg)
        text = "lateral" if "_lateral" in image else "frontal" if "_frontal" in image else ""
    if text == "frontal":
        return FRONTAL
    if text == "lateral":
        return LATERAL
    return view_of(ap_pa)


def read_chexpert(path: str | os.PathLike, classes: list[str] | None = None) -> CxrLtTable:
    """CheXpert ``train.csv`` / ``valid.csv``: ``Path`` ``.../patientN/studyM/viewK_frontal.jpg``, labels 1/0/-1/blank.

    ``fpath`` is ``Path`` as written (the image root is the folder holding ``CheXpert-v1.0...``); ``dicom_id`` is
    ``Path`` too (it is what identifies a CheXpert image), ``subject_id`` the patient and ``study_id``
    ``patientN/studyM``. A blank stays NaN: CheXpert writes it for findings the report does not mention.
    """
    path = Path(path)
    classes = _class_list("chexpert", classes)
    frame, lines = _read_csv(path, ("Path",))
    _refuse_duplicates(path, frame["Path"], lines, "Path")
    vocabulary = _vocabulary("chexpert")
    label_columns = [c for c in frame.columns if c not in CHEXPERT_METADATA]
    unknown = [c for c in label_columns if normalize_label(c) not in vocabulary]
    if unknown:
        raise UserError(f"{path}: column '{unknown[0]}' is neither CheXpert metadata nor a CheXpert label")
    labels = [vocabulary[normalize_label(c)] for c in label_columns]
    values = np.empty((len(frame), len(labels)), dtype=np.float32)
    for j, column in enumerate(label_columns):
        codes, uniques = pd.factorize(frame[column])
        parsed = [CHEXPERT_VALUES.get(u) for u in uniques]
        if None in parsed:
            u = parsed.index(None)
            row = int(np.flatnonzero(codes == u)[0])
            raise UserError(f"{path} line {lines[row]}, column '{column}': label value '{uniques[u]}' "
                            "is not 1, 0, -1 or blank")
        values[:, j] = np.asarray(parsed, dtype=np.float32)[codes]
    matches = [CHEXPERT_PATH.search(p) for p in frame["Path"]]
    bad = [i for i, m in enumerate(matches) if m is None]
    if bad:
        raise UserError(f"{path} line {lines[bad[0]]}: Path '{frame['Path'].iat[bad[0]]}' is not "
                        ".../patientN/studyM/<image>")
    blank = pd.Series([""] * len(frame), dtype="str")
    frontal_lateral = frame["Frontal/Lateral"] if "Frontal/Lateral" in frame else blank
    ap_pa = frame["AP/PA"] if "AP/PA" in frame else blank
    views = [_chexpert_view(f, a, p) for f, a, p in zip(frontal_lateral, ap_pa, frame["Path"])]
    columns = {"dicom_id": frame["Path"], "subject_id": [m.group(1) for m in matches],
               "study_id": [f"{m.group(1)}/{m.group(2)}" for m in matches], "ViewPosition": ap_pa,
               "fpath": frame["Path"]}
    return _table(path, columns, views, classes, map_labels("chexpert", values, labels, classes), lines)


# ---- VinDr-CXR ---------------------------------------------------------------------------------------------

VINDR_COLUMNS = ("image_id", "rad_id", "class_name")
VINDR_VIEW = "PA"  # VinDr-CXR holds posteroanterior adult chest radiographs only


def agreement(marked: np.ndarray, readers: np.ndarray, rule: str) -> np.ndarray:
    """Per (image, label): 1 when the readers who marked it satisfy ``rule``, -1 when some did but too few, else 0.

    ``any``: one reader is enough; ``majority``: more than half of the image's readers; ``all``: every reader.
    """
    if rule not in AGREEMENT_RULES:
        raise UserError(f"VinDr agreement rule must be one of {', '.join(AGREEMENT_RULES)}, got '{rule}'")
    readers = readers[:, None]
    enough = {"any": marked >= 1, "majority": 2 * marked > readers, "all": marked >= readers}[rule]
    return np.where(enough, 1.0, np.where(marked > 0, -1.0, 0.0)).astype(np.float32)


def read_vindr(path: str | os.PathLike, classes: list[str] | None = None, agreement_rule: str = "majority",
               image_suffix: str = ".dicom") -> CxrLtTable:
    """VinDr-CXR annotations: one row per (image, reader, finding) -- boxes repeat a finding -- ``No finding`` rows.

    One table row per image, in order of first appearance; ``fpath`` is ``<image_id><image_suffix>`` (the image root
    is the folder holding the images, e.g. ``train/``). VinDr has no patient ids: each image is its own subject and
    study. A finding marked by some readers but fewer than ``agreement_rule`` asks for is uncertain (-1).
    """
    path = Path(path)
    classes = _class_list("vindr", classes)
    frame, lines = _read_csv(path, VINDR_COLUMNS)
    labels = source_labels("vindr")
    vocabulary = _vocabulary("vindr")
    names = frame["class_name"].map(lambda n: vocabulary.get(normalize_label(n)))
    unknown = np.flatnonzero(names.isna().to_numpy())
    if len(unknown):
        row = unknown[0]
        raise UserError(f"{path} line {lines[row]}, column 'class_name': unknown VinDr label "
                        f"'{frame['class_name'].iat[row]}'")
    image_codes, image_ids = pd.factorize(frame["image_id"])
    label_codes = np.array([labels.index(n) for n in names], dtype=np.int64)
    reader_codes = pd.factorize(frame["rad_id"])[0]
    marks = pd.DataFrame({"image": image_codes, "label": label_codes, "reader": reader_codes})
    readers = marks.groupby("image")["reader"].nunique().sort_index().to_numpy()
    votes = marks.drop_duplicates().groupby(["image", "label"]).size()  # a reader's boxes count once
    marked = np.zeros((len(image_ids), len(labels)), dtype=np.int64)
    marked[votes.index.get_level_values(0), votes.index.get_level_values(1)] = votes.to_numpy()
    values = agreement(marked, readers, agreement_rule)
    first_line = lines[np.unique(image_codes, return_index=True)[1]]
    ids = pd.Series(image_ids, dtype="str")
    columns = {"dicom_id": ids, "subject_id": ids, "study_id": ids, "ViewPosition": [VINDR_VIEW] * len(ids),
               "fpath": ids + image_suffix}
    return _table(path, columns, [view_of(VINDR_VIEW)] * len(ids), classes,
                  map_labels("vindr", values, labels, classes), first_line)


READERS = {"nih": read_nih, "chexpert": read_chexpert, "vindr": read_vindr}


def read_external(fmt: str, path: str | os.PathLike, classes: list[str] | None = None, **options) -> CxrLtTable:
    """Read an external set of format ``fmt`` (nih | chexpert | vindr); ``options`` go to its reader."""
    from .padchest import read_padchest  # padchest.py builds on this module

    readers = {**READERS, "padchest": read_padchest}
    if fmt not in readers:
        raise UserError(f"unknown external format '{fmt}' (known: {', '.join(EXTERNAL_FORMATS)})")
    return readers[fmt](path, classes, **options)
