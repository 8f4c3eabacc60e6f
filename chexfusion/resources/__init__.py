"""Reference tables shipped with the package (see SOURCES.md for their origin)."""

from __future__ import annotations

import csv
import io
from importlib import resources


def read_table(name: str) -> list[dict[str, str]]:
    """Rows of a shipped CSV table as dicts of strings."""
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))
