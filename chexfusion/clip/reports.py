"""Each training study's report, as the contrastive loss reads it: held-out findings removed from the text.

The zero-shot protocol holds some findings out of training (``data.exclude_classes``). For a label-trained model
that means dropping their columns; a model trained on reports would still read them in the text ("there is a
small hydropneumothorax"), so every sentence that mentions a held-out finding, by its name or by any synonym of
the shipped table (``text.synonyms``), is removed, negated mentions ("no consolidation") included: what the model
knows of those findings must come from their names at scoring time alone. A study whose report is left empty
(it mentioned nothing else) has no text to pair with: it is left out and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.reports import Reports
from ..errors import UserError
from ..text.synonyms import synonyms

_SECTION = re.compile(r"^\s*([A-Z][A-Z /&()-]*[A-Z)])\s*:\s*", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def held_out_pattern(names: list[str]) -> re.Pattern | None:
    """A case-insensitive pattern matching any held-out name or synonym as whole words; None for none."""
    phrases = sorted({p.lower() for name in names for p in [name, *synonyms(name)]}, key=len, reverse=True)
    if not phrases:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(p) for p in phrases) + r")\b", re.IGNORECASE)


def remove_mentions(report: str, pattern: re.Pattern | None) -> str:
    """``report`` without the sentences ``pattern`` matches; a section left empty is dropped with its heading."""
    if pattern is None:
        return report
    headings = list(_SECTION.finditer(report))
    if not headings:
        return _kept_sentences(report, pattern)
    sections = []
    for i, match in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(report)
        body = _kept_sentences(report[match.end():end], pattern)
        if body:
            sections.append(f"{match.group(1)}: {body}")
    return "\n".join(sections)


def _kept_sentences(text: str, pattern: re.Pattern) -> str:
    return " ".join(s for s in _SENTENCE_END.split(" ".join(text.split())) if s and not pattern.search(s))


@dataclass
class StudyTexts:
    """The studies kept for training (in the given order) and their report texts, with what was left out."""

    studies: list[str]
    texts: list[str]
    missing: list[str]  # no report (skipped only with data.skip_missing_reports)
    emptied: list[str]  # the report mentioned only held-out findings


def study_texts(studies: list[str], reports: Reports, held_out: list[str], skip_missing: bool,
                source: str) -> StudyTexts:
    """Pair each study with its report less the held-out findings; a study without a report is a one-line error
    naming it (``source``: the reports file), or skipped and counted with ``skip_missing``."""
    pattern = held_out_pattern(held_out)
    kept, texts, missing, emptied = [], [], [], []
    for study in map(str, studies):
        if study not in reports.text:
            if not skip_missing:
                raise UserError(f"{source}: no report for study {study} (data.skip_missing_reports=true skips "
                                "such studies and counts them)")
            missing.append(study)
            continue
        text = remove_mentions(reports.text[study], pattern)
        if not text:
            emptied.append(study)
            continue
        kept.append(study)
        texts.append(text)
    if not kept:
        raise UserError(f"{source}: no training study has a usable report")
    return StudyTexts(kept, texts, missing, emptied)
