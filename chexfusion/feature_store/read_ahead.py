"""Decode the next row group while the last one is checked: verification paid on a second core, not in turn.

A verified read hashes every value it decoded (``checksums.py``). Done in turn,
that is one more pass over memory after each decode, ~20-35% of a read's time
measured here (XXH3 runs at memory speed, and so does decoding). Both pyarrow's
decoder and xxhash release the GIL, so the check of row group ``k`` can run on
a worker thread while the calling thread decodes ``k + 1``; a row group is
handed on only once its own check has passed, so nothing is computed from
unchecked data, and a failed check raises in the caller, as a check in turn
would. Memory: one decoded row group more than a read in turn holds (the one
being checked while the next is decoded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Decoded = TypeVar("Decoded")


def checked_in_turn(items: Iterable[Item], decode: Callable[[Item], Decoded],
                    check: Callable[[Item, Decoded], None] | None) -> Iterator[tuple[Item, Decoded]]:
    """``(item, decode(item))`` for each of ``items`` in order, each after ``check(item, decoded)`` returned.

    ``check`` runs on one worker thread, overlapping the decode of the next item; ``check=None`` (an unverified
    read) decodes in turn with no thread. An exception from either is raised here, at the item it concerns.
    """
    if check is None:
        for item in items:
            yield item, decode(item)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chexfusion-verify") as pool:
        pending = None
        for item in items:
            decoded = decode(item)
            checking = pool.submit(check, item, decoded)
            if pending is not None:
                yield _checked(*pending)
            pending = item, decoded, checking
            del decoded, checking  # only ``pending`` holds them: a finished read frees its row groups at once
        if pending is not None:
            yield _checked(*pending)


def _checked(item, decoded, checking) -> tuple:
    checking.result()
    return item, decoded
