"""The sentences that stand for a class name when it is encoded as a query.

A bare label such as "Fissure" or "Hilum" is a weak prompt for a general text
model: it says little about what the finding looks like. So each class is
described by the prompt template filled with its name *and* with a few
radiology synonyms or short descriptions from the shipped table
``chexfusion/resources/label_synonyms.csv`` (one ``class,synonym`` row per
phrase, written for every CXR-LT 2023 / 2024 class and the five Task 3
zero-shot classes). A class the table does not know (any new finding name)
is described by its name alone, so any label set works.

Names are matched ignoring case and repeated spaces, so ``pleural effusion``
typed on a command line finds the synonyms of ``Pleural Effusion``.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import UserError
from ..resources import read_table

SYNONYMS_TABLE = "label_synonyms.csv"
DEFAULT_TEMPLATE = "a chest x-ray showing {}"
PLACEHOLDER = "{}"


def _normalise(name: str) -> str:
    return " ".join(name.split()).casefold()


@lru_cache(maxsize=1)
def _table() -> dict[str, tuple[str, ...]]:
    """Normalised class name -> its synonyms, in table order, read once per process."""
    table: dict[str, list[str]] = {}
    for line, row in enumerate(read_table(SYNONYMS_TABLE), start=2):
        name, synonym = (row.get("class") or "").strip(), (row.get("synonym") or "").strip()
        if not name or not synonym:
            # The table ships with the package: a blank cell is a packaging bug, not user input.
            raise ValueError(f"{SYNONYMS_TABLE} line {line}: empty class or synonym")
        table.setdefault(_normalise(name), []).append(synonym)
    return {name: tuple(phrases) for name, phrases in table.items()}


def synonyms(class_name: str) -> list[str]:
    """The table's synonyms of ``class_name`` (empty for a name the table does not know)."""
    return list(_table().get(_normalise(class_name), ()))


def check_template(template: str) -> str:
    """A template must contain ``{}`` where the class name goes; anything else is a user error."""
    if not isinstance(template, str) or PLACEHOLDER not in template:
        raise UserError(f"text template {template!r} has no '{PLACEHOLDER}' where the class name goes")
    return template


def fill(template: str, phrase: str) -> str:
    """The template with every ``{}`` replaced by ``phrase`` (other braces are left alone)."""
    return template.replace(PLACEHOLDER, phrase)


def class_texts(class_name: str, template: str = DEFAULT_TEMPLATE, use_synonyms: bool = True) -> list[str]:
    """The sentences whose embeddings are averaged into the class's query, the name's own sentence first."""
    check_template(template)
    phrases = [class_name] + (synonyms(class_name) if use_synonyms else [])
    texts: list[str] = []
    for phrase in phrases:
        text = fill(template, phrase)
        if text not in texts:  # a synonym repeating the name must not double its weight
            texts.append(text)
    return texts
