"""Progress bars that suit where the output goes.

On a terminal: tqdm as usual. Into a log file (``make stage1 > log``, a batch
job): a plain line at most every ``LOG_INTERVAL`` seconds and at the end of each
bar, instead of the thousands of carriage-return redraws a file would otherwise
collect. Use ``from chexfusion.progress import tqdm`` wherever tqdm would be used.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm as _tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines in a log file


class _Lines:
    """A stream that turns tqdm's carriage-return redraws into separate lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(_tqdm):
    """In a file, a postfix update (the loss after each step) waits for the next timed line instead of forcing one."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def _is_terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm`` on a terminal; in a file, a line every ``LOG_INTERVAL`` seconds and one at the end
    (nothing at all with ``disable=None``, tqdm's "only on a terminal")."""
    stream = kwargs.get("file") or sys.stderr
    if "disable" in kwargs and kwargs["disable"] is None:  # tqdm's "on a terminal only": nothing in a file
        return _tqdm(*args, **kwargs)
    if not _is_terminal(stream) and not kwargs.get("disable"):
        kwargs.update(file=_Lines(stream), mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL * 4,
                      dynamic_ncols=False, ncols=100, leave=True)
        return _LogBar(*args, **kwargs)
    return _tqdm(*args, **kwargs)
