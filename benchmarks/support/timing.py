"""Side-by-side timing on a shared machine.

Other jobs share the cores, so an absolute time says little; a ratio of two
things measured in one process, in alternation (A B A B ...), with medians,
holds up: a burst of load from a neighbour lands on both sides alike. Both
sides run with the same torch thread count.
"""

from __future__ import annotations

import statistics
from typing import Callable


def set_threads(n: int) -> int:
    """Pin torch's intra-op threads (both sides of a comparison must use the same count)."""
    import torch

    torch.set_num_threads(n)
    return torch.get_num_threads()


def interleaved(sides: dict[str, Callable[[], float]], repeats: int, warmup: int = 0) -> dict[str, list[float]]:
    """Call each side in turn, ``repeats`` rounds, after ``warmup`` untimed rounds; each call returns the seconds
    it measured itself (so a side can leave set-up out of its timing). Returns every side's list of seconds."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            times[name].append(fn())
    return times


def median_rate(items: float, seconds: list[float]) -> float:
    """Items per second at the median time."""
    return items / statistics.median(seconds)
