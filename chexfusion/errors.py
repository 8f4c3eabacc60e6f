"""The one exception type a user is meant to see.

Anything the user can fix (a bad CSV, a missing file, an unknown config key, a
stale feature store) raises :class:`UserError` with one line that names the
file, row or key. The command line turns it into that line on stderr and exit
status 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input, reported as one line, exit status 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
