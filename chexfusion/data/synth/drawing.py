"""Resolution-independent drawing primitives for the synthetic radiographs.

Everything is drawn in normalised coordinates: x and y run from -1 to 1 across
the image (x to the right, y down), so the same anatomy renders at 64 or 1024
px. Shapes have soft edges about one pixel wide (anti-aliasing without
supersampling), and every primitive works on the bounding box it touches only,
which keeps a full radiograph at a few milliseconds of numpy.

Thin structures (vessels, tubes, wires, fissure lines) are stroked with PIL on a
float image and blurred, because PIL's C line drawing is much cheaper than a
distance field per segment.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

F32 = np.float32


class Canvas:
    """Coordinate vectors of a square image and helpers to address a sub-window."""

    def __init__(self, size: int):
        self.size = int(size)
        centres = ((np.arange(self.size, dtype=F32) + 0.5) / self.size) * 2 - 1
        self.xs = centres
        self.ys = centres
        self.px = 2.0 / self.size  # normalised units per pixel
        self.edge = 1.5 * self.px  # soft-edge width of masks

    def zeros(self) -> np.ndarray:
        return np.zeros((self.size, self.size), dtype=F32)

    def window(self, x0: float, y0: float, x1: float, y1: float):
        """Row/column slices covering [x0, x1] x [y0, y1] (clipped), and the grids on them."""
        def to_index(v):
            return int(np.floor((v + 1) / self.px))

        c0, c1 = max(0, to_index(x0)), min(self.size, to_index(x1) + 2)
        r0, r1 = max(0, to_index(y0)), min(self.size, to_index(y1) + 2)
        if c1 <= c0 or r1 <= r0:
            return None
        rows, cols = slice(r0, r1), slice(c0, c1)
        return rows, cols, self.xs[cols][None, :], self.ys[rows][:, None]

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        """Normalised coordinates to PIL pixel coordinates."""
        return ((x + 1) / self.px, (y + 1) / self.px)


def soft_inside(signed_distance, edge: float):
    """1 inside (negative distance), 0 outside, linear over ``edge`` around the boundary."""
    return np.clip(0.5 - signed_distance / edge, 0.0, 1.0)


def ellipse_radius(X, Y, cx, cy, a, b, angle=0.0):
    """Normalised elliptic radius: 1 on the ellipse boundary."""
    dx, dy = X - cx, Y - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dx / a) ** 2 + (dy / b) ** 2)


class Ellipse(NamedTuple):
    """Where an ellipse lies: centre, half-axes and rotation, in the canvas's coordinates."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0


def add_ellipse(layer, canvas: Canvas, shape: Ellipse, value, edge=None, profile="flat"):
    """Add an ellipse to ``layer``.

    ``profile`` "flat" is a uniform disc (bone, metal), "dome" a sqrt profile
    (the thickness of a ball of tissue seen through), "gauss" a soft blob.
    """
    cx, cy, a, b, angle = shape
    r_max = max(a, b) * (2.2 if profile == "gauss" else 1.0) + 2 * canvas.px
    w = canvas.window(cx - r_max, cy - r_max, cx + r_max, cy + r_max)
    if w is None:
        return
    rows, cols, X, Y = w
    r = ellipse_radius(X, Y, cx, cy, a, b, angle)
    if profile == "gauss":
        blob = np.exp(-2.0 * r * r)
    else:
        inside = soft_inside((r - 1.0) * min(a, b), edge or canvas.edge)
        blob = inside if profile == "flat" else inside * np.sqrt(np.clip(1 - r * r, 0, 1) * 0.85 + 0.15)
    layer[rows, cols] += (value * blob).astype(F32)


def add_ring(layer, canvas: Canvas, shape: Ellipse, thickness, value, arc=None):
    """Add an elliptic ring (a thin wall or a calcified rim); ``arc`` = (start, end) polar angles."""
    cx, cy, a, b, angle = shape
    pad = thickness + 2 * canvas.px
    w = canvas.window(cx - a - pad, cy - b - pad, cx + a + pad, cy + b + pad)
    if w is None:
        return
    rows, cols, X, Y = w
    r = ellipse_radius(X, Y, cx, cy, a, b, angle)
    dist = np.abs(r - 1.0) * min(a, b)
    wall = soft_inside(dist - thickness / 2, canvas.edge)
    if arc is not None:
        theta = np.arctan2(Y - cy, X - cx)
        start, end = arc
        rel = np.mod(theta - start, 2 * np.pi)
        wall = wall * (rel <= np.mod(end - start, 2 * np.pi))
    layer[rows, cols] += (value * wall).astype(F32)


def _render_crop(canvas: Canvas, points_px, pad_px: float, blur_px: float, paint) -> np.ndarray:
    """Draw on the bounding box of ``points_px`` only, blur, and place it in a full frame.

    ``paint(width, height, (x0, y0))`` returns the drawn block. Blurring the box
    instead of the whole frame is what keeps thin structures cheap.
    """
    out = canvas.zeros()
    if not points_px:
        return out
    pts = np.asarray(points_px, dtype=float)
    margin = pad_px + 3 * blur_px + 2
    c0 = max(0, int(np.floor(pts[:, 0].min() - margin)))
    r0 = max(0, int(np.floor(pts[:, 1].min() - margin)))
    c1 = min(canvas.size, int(np.ceil(pts[:, 0].max() + margin)) + 1)
    r1 = min(canvas.size, int(np.ceil(pts[:, 1].max() + margin)) + 1)
    if c1 <= c0 or r1 <= r0:
        return out
    block = paint(c1 - c0, r1 - r0, (c0, r0))
    if blur_px > 0:
        block = ndimage.gaussian_filter(block, blur_px, truncate=2.5)
    out[r0:r1, c0:c1] = block
    return out


def strokes(canvas: Canvas, polylines, blur_px: float = 0.6) -> np.ndarray:
    """Stroke polylines on a float image: each item is (points, width, value).

    ``points`` are normalised (x, y) pairs and ``width`` is in normalised units.
    Lines thinner than a pixel are drawn one pixel wide with proportionally less
    value, so a thin wire keeps its visibility at every image size.
    """
    items, all_px, pad = [], [], 0.0
    for points, width, value in polylines:
        px = ((np.asarray(points, dtype=float) + 1) / canvas.px).tolist()
        width_px = width / canvas.px
        drawn = max(1, int(round(width_px)))
        items.append((px, drawn, float(value) * min(1.0, width_px / drawn)))
        all_px.extend(px)
        pad = max(pad, drawn)

    def paint(w, h, offset):
        ox, oy = offset
        image = Image.new("F", (w, h), 0.0)
        draw = ImageDraw.Draw(image)
        for px, drawn, value in items:
            draw.line([(x - ox, y - oy) for x, y in px], fill=value, width=drawn, joint="curve")
        return np.asarray(image, dtype=F32)

    return _render_crop(canvas, all_px, pad, blur_px, paint)


def polygons(canvas: Canvas, shapes, blur_px: float = 0.8) -> np.ndarray:
    """Fill polygons ((points, value) pairs, normalised coordinates); overlapping ones add up."""
    items = [([canvas.to_px(x, y) for x, y in points], float(value)) for points, value in shapes]

    def paint(w, h, offset):
        ox, oy = offset
        total = np.zeros((h, w), dtype=F32)
        for px, value in items:
            image = Image.new("F", (w, h), 0.0)
            ImageDraw.Draw(image).polygon([(x - ox, y - oy) for x, y in px], fill=value)
            total += np.asarray(image, dtype=F32)
        return total

    return _render_crop(canvas, [pt for px, _ in items for pt in px], 1, blur_px, paint)


def smooth_noise(rng: np.random.Generator, canvas: Canvas, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise with about ``cells`` features across the image.

    Drawn on a coarse grid and upsampled bicubically, so it costs the same at any
    image size and the texture scale does not depend on the resolution.
    """
    coarse = rng.standard_normal((cells + 3, cells + 3)).astype(F32)
    image = Image.fromarray(coarse)
    # Crop away the border cells so the interpolation has neighbours on all sides.
    step = canvas.size / cells
    big = image.resize((int(round((cells + 3) * step)),) * 2, Image.Resampling.BICUBIC)
    off = int(round(1.5 * step))
    arr = np.asarray(big, dtype=F32)[off:off + canvas.size, off:off + canvas.size]
    return np.ascontiguousarray(arr)
