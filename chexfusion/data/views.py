"""DICOM ``ViewPosition`` codes to the three views the models know.

Every code in the CXR-LT 2024 training CSV is mapped (reference table
``resources/view_positions_2024.csv``); a missing or unrecognised code is
``unknown`` -- about 4% of CXR-LT 2024 training images -- and is kept, never dropped: how an
unknown view is routed is a config choice of the feature store and stage 2. PadChest's ``Projection`` codes
(``resources/padchest_projections.csv``) are known too, so a converted CXR-LT 2026 CSV reads back with its views.
"""

from __future__ import annotations

import math

from ..resources import read_table

FRONTAL, LATERAL, UNKNOWN = "frontal", "lateral", "unknown"
VIEWS = (FRONTAL, LATERAL, UNKNOWN)
VIEW_INDEX = {v: i for i, v in enumerate(VIEWS)}


def _load_codes() -> dict[str, str]:
    codes = {}
    for row in read_table("view_positions_2024.csv"):
        code = row["ViewPosition"].strip().upper()
        if code:
            codes[code] = row["view"]
    # Spellings seen in other exports of the same codes.
    codes.setdefault("LAT", LATERAL)
    codes.setdefault("LLAT", LATERAL)
    codes.setdefault("RL", LATERAL)
    for row in read_table("padchest_projections.csv"):  # PadChest's Projection codes (L, AP_horizontal, ...)
        if row["view"] != UNKNOWN:
            codes.setdefault(row["Projection"].strip().upper(), row["view"])
    return codes


VIEW_CODES: dict[str, str] = _load_codes()


def view_of(code) -> str:
    """``frontal``, ``lateral`` or ``unknown`` for a ViewPosition value (any case, NaN, None)."""
    if code is None or (isinstance(code, float) and math.isnan(code)):
        return UNKNOWN
    key = " ".join(str(code).strip().upper().split())
    return VIEW_CODES.get(key, UNKNOWN)


# ViewCodeSequence_CodeMeaning values (free text in MIMIC) by the words they contain.
_MEANING_WORDS = (("lateral", LATERAL), ("postero-anterior", FRONTAL), ("antero-posterior", FRONTAL),
                  ("posteroanterior", FRONTAL), ("anteroposterior", FRONTAL),
                  ("oblique", FRONTAL))  # as LAO / RAO in the ViewPosition table


def view_of_row(position, code_meaning=None) -> str:
    """View from ``ViewPosition``, falling back to ``ViewCodeSequence_CodeMeaning``."""
    view = view_of(position)
    if view != UNKNOWN or code_meaning is None or isinstance(code_meaning, float):
        return view
    meaning = str(code_meaning).strip().lower()
    for word, mapped in _MEANING_WORDS:
        if word in meaning:
            return mapped
    return UNKNOWN


def dicom_view(dataset) -> str | None:
    """A DICOM header's view (ViewPosition, else the view code meaning); None when it records neither."""
    position = dataset.get("ViewPosition")
    sequence = dataset.get("ViewCodeSequence")
    meaning = sequence[0].get("CodeMeaning") if sequence else None
    if not str(position or "").strip() and meaning is None:
        return None
    return view_of_row(str(position) if position is not None else None, str(meaning) if meaning is not None else None)


def dicom_file_view(path) -> str | None:
    """The view a DICOM file's header records; None for another format or a header without one."""
    import pydicom

    with open(path, "rb") as handle:
        if handle.read(132)[128:] != b"DICM":
            return None
        handle.seek(0)
        try:
            return dicom_view(pydicom.dcmread(handle, stop_before_pixels=True))
        except Exception:  # a damaged header: the pixel reader reports it with the file's name
            return None
