"""How well a heat map points at a finding's region: the pointing game and the energy inside.

- **Pointing game** (Zhang et al. 2018, "Top-down neural attention by
  excitation backprop"): a hit when the map's peak lies in the region or
  within ``tolerance`` pixels of it (their 15 px at 224 px: a coarse map's peak
  has no finer position). A map that is zero everywhere points nowhere: a miss.
- **Energy inside**: the share of the map's total (non-negative) mass inside
  the region (the "energy-based pointing game" of Score-CAM, Wang et al. 2020);
  0 for an all-zero map.
- **Random baseline**: the expected value of both for a map of independent
  uniform random values: its peak is equally likely on every pixel, so the
  hit rate is the tolerance-widened region's share of the image, and the
  expected energy share is the region's share. Exact expectations, so the
  baseline has no sampling noise.

**Coarse maps** (``grid``): every method here is a backbone map of ``h x w``
cells (4 x 4 for a stride-32 backbone at 128 px) upsampled bilinearly, so its
"peak pixel" is not a measurement: bilinear upsampling holds a border cell's
value flat over the outer half cell, and ``argmax`` takes that plateau's first
pixel, on the image's edge, half a cell from where the cell is centred, and at
a few cells per side that choice, not the map, decides most hits. With
``grid`` the map is read at the centre of each cell, the peak is the cell whose
centre holds the most, and the hit is that centre within the tolerance of the
region; the random baseline is then a uniform random map *on the same grid*
(its peak equally likely in every cell: the share of cell centres within the
tolerance), so method and baseline point by one rule.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import ndimage

RANDOM = "random"
DEFAULT_TOLERANCE = 15 / 224  # of the image side


def widened(region: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Pixels within ``tolerance_px`` (Euclidean) of the region."""
    if tolerance_px <= 0:
        return region
    return ndimage.distance_transform_edt(~region) <= tolerance_px


def cell_centres(size: tuple[int, int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column pixel indices of the centres of a ``grid`` of cells tiling an image of ``size`` (rows, cols)."""
    return tuple(((np.arange(cells) + 0.5) * side / cells).astype(int) for side, cells in zip(size, grid))


def pointing_hit(heat: np.ndarray, near_region: np.ndarray, grid: tuple[int, int] | None = None) -> bool:
    """Whether the map's peak (a pixel, or with ``grid`` the centre of the cell whose centre holds the most)
    lies in ``near_region``; an all-zero map points nowhere."""
    if not heat.max() > 0:
        return False
    if grid is None:
        return bool(near_region.flat[int(np.argmax(heat))])
    rows, cols = cell_centres(heat.shape, grid)
    row, col = np.unravel_index(int(np.argmax(heat[np.ix_(rows, cols)])), grid)
    return bool(near_region[rows[row], cols[col]])


def random_pointing(near_region: np.ndarray, grid: tuple[int, int] | None = None) -> float:
    """Expected hit rate of a uniform random map: its peak is equally likely on every pixel (or every cell)."""
    if grid is None:
        return float(near_region.mean())
    return float(near_region[np.ix_(*cell_centres(near_region.shape, grid))].mean())


def energy_inside(heat: np.ndarray, region: np.ndarray) -> float:
    total = float(heat.sum())
    return float(heat[region].sum()) / total if total > 0 else 0.0


class Tally:
    """Pointing hits and energy shares per method and class; means per class and over every (image, finding)."""

    def __init__(self):
        self.hits = defaultdict(lambda: defaultdict(list))
        self.energy = defaultdict(lambda: defaultdict(list))

    def add(self, method: str, name: str, hit: float, energy: float) -> None:
        self.hits[method][name].append(float(hit))
        self.energy[method][name].append(float(energy))

    def add_map(self, method: str, name: str, heat: np.ndarray, region: np.ndarray, near: np.ndarray,
                grid: tuple[int, int] | None = None) -> None:
        self.add(method, name, pointing_hit(heat, near, grid), energy_inside(heat, region))

    def add_random(self, name: str, region: np.ndarray, near: np.ndarray, grid: tuple[int, int] | None = None) -> None:
        self.add(RANDOM, name, random_pointing(near, grid), float(region.mean()))

    def summary(self) -> dict:
        """``{method: {pointing_game: {overall, per_class}, energy_inside: {...}, n}}`` (random last)."""
        methods = sorted(m for m in self.hits if m != RANDOM) + ([RANDOM] if RANDOM in self.hits else [])
        out = {}
        for method in methods:
            entry = {}
            for key, values in (("pointing_game", self.hits[method]), ("energy_inside", self.energy[method])):
                every = [v for per_class in values.values() for v in per_class]
                entry[key] = {"overall": float(np.mean(every)) if every else None,
                              "per_class": {c: float(np.mean(v)) for c, v in sorted(values.items())}}
            entry["n"] = {c: len(v) for c, v in sorted(self.hits[method].items())}
            out[method] = entry
        return out


def format_table(summary: dict) -> str:
    """A plain-text table: one row per class and overall, pointing game / energy inside per method."""
    methods = list(summary)
    if not methods:
        return "no finding with a region was scored"
    classes = sorted({c for m in methods for c in summary[m]["n"]})
    counts = summary[methods[0]]["n"]
    width = max([len(c) for c in classes] + [len("overall")])
    head = f"{'class':<{width}}  {'n':>5}  " + "  ".join(f"{m + ' PG/energy':>22}" for m in methods)
    lines = [head]
    for name in classes + ["overall"]:
        n = sum(counts.values()) if name == "overall" else counts.get(name, 0)
        cells = []
        for m in methods:
            pg, en = summary[m]["pointing_game"], summary[m]["energy_inside"]
            if name == "overall":
                cells.append(f"{pg['overall']:.3f} / {en['overall']:.3f}")
            else:
                cells.append(f"{pg['per_class'][name]:.3f} / {en['per_class'][name]:.3f}")
        lines.append(f"{name:<{width}}  {n:>5}  " + "  ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)
