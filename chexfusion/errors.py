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
        text = str(message)
        if "Traceback" in text:
            # torch's DataLoader re-raises a worker's exception with the worker's traceback in the message:
            # the user's line is the last one, after "SomeError: ".
            last = [line for line in text.splitlines() if line.strip()][-1]
            text = last.split("Error: ", 1)[1] if "Error: " in last else last
        super().__init__(" ".join(text.split()))
