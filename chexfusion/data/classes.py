"""Label sets of the CXR-LT challenges and the head / medium / tail grouping.

The class lists and training counts come from the shipped reference table
(``chexfusion/resources/cxr_lt_classes.csv``). They are used as named presets
(``cxr-lt-2023``, ``cxr-lt-2024``) and by the synthetic generator; a real run
takes its class list from its config or from the CSV header instead, so any
other label set works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..resources import read_table

LABEL_SETS = ("cxr-lt-2024", "cxr-lt-2023")

# Prevalence group boundaries used by the CXR-LT reports (fraction of training images).
HEAD_MIN = 0.10
TAIL_MAX = 0.01


@dataclass(frozen=True)
class ClassInfo:
    name: str
    train_images: int  # images with this finding in the challenge's training CSV
    group: str  # head / medium / tail as the challenge reported it


def label_set(name: str) -> list[ClassInfo]:
    """The classes of a CXR-LT label set, in the challenge's column order."""
    if name not in LABEL_SETS:
        raise UserError(f"unknown label set '{name}' (known: {', '.join(LABEL_SETS)})")
    year = name.rsplit("-", 1)[1]
    out = []
    for row in read_table("cxr_lt_classes.csv"):
        count = row[f"train_images_{year}"]
        if count:
            out.append(ClassInfo(row["class"], int(count), row[f"group_{year}"]))
    return out


def zero_shot_classes() -> list[str]:
    """The five unseen classes of CXR-LT 2024 Task 3."""
    return [r["class"] for r in read_table("cxr_lt_classes.csv") if r["zero_shot_2024"] == "1"]


def prevalence_group(prevalence: float) -> str:
    """head (>10%), medium (1-10%) or tail (<1%) of the training images."""
    if prevalence > HEAD_MIN:
        return "head"
    if prevalence >= TAIL_MAX:
        return "medium"
    return "tail"
