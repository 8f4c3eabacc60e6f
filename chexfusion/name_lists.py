"""Comma-separated names on the command line (classes, losses): one rule for every command.

Names are stripped of surrounding spaces; an empty name (``"A,,B"``, a trailing
comma, an empty string) or a name given twice is a one-line error naming the
option, never silently dropped: a typo in a class list should not quietly
evaluate fewer classes.
"""

from __future__ import annotations

from .errors import UserError


def parse_name_list(values: str | list[str], option: str) -> list[str]:
    """``"A, B"`` (or several such strings, e.g. from ``nargs="+"``) -> ``["A", "B"]``, checked."""
    values = [values] if isinstance(values, str) else list(values)
    names = [name.strip() for value in values for name in value.split(",")]
    if not names or any(not name for name in names):
        raise UserError(f"{option}: empty name in {', '.join(repr(v) for v in values)} (give names separated by "
                        f"commas)")
    return check_distinct(names, option)


def check_distinct(names: list[str], source: str) -> list[str]:
    """``names`` if there is at least one and none is given twice; else a one-line error naming ``source``."""
    if not names:
        raise UserError(f"{source}: no names given")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"{source}: '{twice[0]}' given twice")
    return names


def check_distinct_columns(names: list[str], path) -> None:
    """A CSV header that names a column twice is refused, naming it: pandas would silently rename the second copy
    and read labels from the wrong one."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UserError(f"{path}: column '{name}' appears twice in the header")
        seen.add(name)
