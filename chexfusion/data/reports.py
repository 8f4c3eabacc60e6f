"""Study reports for image-text training: ``reports.csv`` (what ``synth`` writes) or MIMIC-CXR's report files.

MIMIC-CXR keeps one free-text report per study at ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt``, beside the study's
image folder ``files/pXX/pXXXXXXXX/sXXXXXXXX/`` that a CXR-LT CSV's ``fpath`` points into, so a study's report
is found from any of its images. What a model learns from is the FINDINGS and IMPRESSION sections (the header,
indication, technique and comparison say little about the image); a report with neither is used whole and
counted. A study without a report is a one-line error naming the study and the file: training on a silently
smaller set would change what is being compared.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

REPORTS_CSV = "reports.csv"
SECTIONS = ("FINDINGS", "IMPRESSION")
_HEADING = re.compile(r"^\s*([A-Z][A-Z /&()-]*[A-Z)])\s*:", re.MULTILINE)


@dataclass
class Reports:
    """Report text per study_id, and how many reports had no FINDINGS / IMPRESSION section (used whole)."""

    text: dict[str, str]
    whole: list[str] = field(default_factory=list)

    def for_studies(self, study_ids, source) -> list[str]:
        """The report of each study in ``study_ids``; a missing one is a one-line error naming ``source``."""
        out = []
        for study in map(str, study_ids):
            if study not in self.text:
                raise UserError(f"{source}: no report for study {study}")
            out.append(self.text[study])
        return out


def read_reports_csv(path: str | Path) -> Reports:
    """``study_id, report`` rows (``synth``'s ``reports.csv``); a study twice or an empty report is an error."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"study_id", "report"} <= set(reader.fieldnames):
                raise UserError(f"{path}: needs columns study_id and report")
            text = {}
            for line, row in enumerate(reader, start=2):
                study, report = (row["study_id"] or "").strip(), (row["report"] or "").strip()
                if not study or not report:
                    raise UserError(f"{path} line {line}: empty study_id or report")
                if study in text:
                    raise UserError(f"{path} line {line}: study {study} has a second report")
                text[study] = report
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    return Reports(text)


def report_sections(text: str) -> str | None:
    """FINDINGS then IMPRESSION of a MIMIC-CXR report, as ``"FINDINGS: ...\\nIMPRESSION: ..."``; None when the
    report has neither."""
    headings = list(_HEADING.finditer(text))
    found = {}
    for i, match in enumerate(headings):
        name = match.group(1).strip()
        if name in SECTIONS:
            end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
            body = " ".join(text[match.end():end].split())
            if body:
                found[name] = body
    if not found:
        return None
    return "\n".join(f"{name}: {found[name]}" for name in SECTIONS if name in found)


def mimic_report_path(root: Path, fpath: str) -> Path:
    """The report file of the study an image belongs to: ``files/pXX/pYYYYYYYY/sZZZZZZZZ/x.jpg`` ->
    ``files/pXX/pYYYYYYYY/sZZZZZZZZ.txt``."""
    study_folder = Path(fpath).parent
    return root / study_folder.parent / f"{study_folder.name}.txt"


def read_mimic_reports(root: str | Path, frame) -> Reports:
    """The report of every study of a CXR-LT table (``frame``: dicom_id, study_id, fpath), from MIMIC-CXR's
    report files under ``root`` (the folder holding ``files/``)."""
    root = Path(root)
    text, whole = {}, []
    for study, fpath in zip(frame["study_id"].astype(str), frame["fpath"].astype(str)):
        if study in text:
            continue
        path = mimic_report_path(root, fpath)
        if not path.is_file():
            raise UserError(f"{path}: no report for study {study} (MIMIC-CXR's files/pXX/pXXXXXXXX/sXXXXXXXX.txt)")
        raw = path.read_text(encoding="utf-8", errors="replace")
        sections = report_sections(raw)
        if sections is None:
            whole.append(study)
            sections = " ".join(raw.split())
        if not sections:
            raise UserError(f"{path}: the report of study {study} is empty")
        text[study] = sections
    return Reports(text, whole)
