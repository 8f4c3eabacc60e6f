"""Normal chest anatomy in a frontal and a lateral projection.

A radiograph is the attenuation of X-rays along each ray, so the scene is built
as layers of "material along the ray" that the acquisition step turns into an
image (see :mod:`.radiograph`):

- ``tissue``: soft-tissue thickness (body outline, neck, heart, mediastinum,
  abdomen) -- bright;
- ``air``: air in the lungs, trachea and stomach, which *replaces* tissue --
  dark; a finding that fills the air spaces (fluid, consolidation) lowers it;
- ``vessels``: lung markings, only visible where there is air around them;
- ``bone``: ribs, clavicles, spine, sternum, scapulae, humeri -- brighter;
- ``metal``: support devices -- brightest.

Everything is in normalised canonical coordinates (x, y in [-1, 1], y down;
on the frontal view the patient's right is on the image left, as radiologists
read it; on the lateral view anterior is on the left). :class:`Anatomy` holds
one patient's shape; findings change it (a wider heart, flatter domes, a bowed
spine) before the scene is drawn, and draw on the scene afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .drawing import F32, Canvas, Ellipse, add_ellipse, polygons, soft_inside, strokes


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest shape; findings return modified copies (``dataclasses.replace``)."""

    sex: str
    age: float
    thorax_w: float  # half-width of the rib cage's inner margin on the frontal view
    body_w: float  # half-width of the skin outline
    apex_y: float  # top of the lung apices
    dome_r: float  # peak of the right hemidiaphragm (frontal)
    dome_l: float  # peak of the left hemidiaphragm
    cp_drop: float  # depth of the costophrenic angles below the dome peaks
    heart_hw: float  # half-width of the cardiac silhouette (CTR = heart_hw / thorax_w)
    heart_hh: float
    heart_x: float
    medi_hw: float  # half-width of the superior mediastinum
    knob_r: float  # aortic knob radius
    spine_x: float
    rib_pitch: float
    clav_y: float
    bone_density: float
    breast: float  # 0 for male patients
    ap_half: float  # half the antero-posterior depth of the chest (lateral view)
    kyphosis: float  # posterior bow of the thoracic spine (lateral view)
    vessel_seed: int  # the patient's own branching of lung vessels
    # Finding-controlled parameters (normal values).
    air: float = 1.0  # lung air (emphysema raises it)
    markings: float = 1.0  # strength of lung vessel markings (emphysema, embolism prune them)
    hilum: float = 1.0  # size of the hilar vessels (pulmonary hypertension, embolism)
    aorta_wave: float = 0.0  # tortuosity of the descending aorta
    retrosternal_fill: float = 0.0  # soft tissue in the retrosternal space (lateral)
    vertebral_wedge: float = 0.0  # anterior wedging of thoracic vertebrae (kyphosis)
    rib_breaks: tuple = ()  # (side, rib index, position 0..1, step, gap)
    clavicle_breaks: tuple = ()  # (side, position 0..1, step, gap)
    humerus_breaks: tuple = ()  # (side, step)
    compressed_vertebra: tuple = ()  # (level index, height loss 0..1)
    ptx_collapse: dict = field(default_factory=dict)  # side -> lung scale (pneumothorax)
    portable: bool = False  # AP supine film: magnified heart, higher domes, scapulae over the lungs


def draw_anatomy(rng: np.random.Generator, sex: str, age: float) -> Anatomy:
    """Draw a patient's chest: the same patient looks alike in every view and study."""
    u = rng.uniform
    thorax_w = u(0.70, 0.80)
    dome_r = u(0.26, 0.38)
    heart_hw = thorax_w * u(0.39, 0.47)
    old = np.clip((age - 40) / 45, 0, 1)
    return Anatomy(
        sex=sex,
        age=float(age),
        thorax_w=thorax_w,
        body_w=thorax_w + u(0.07, 0.16),
        apex_y=u(-0.80, -0.71),
        dome_r=dome_r,
        dome_l=dome_r + u(0.03, 0.07),
        cp_drop=u(0.20, 0.28),
        heart_hw=heart_hw,
        heart_hh=u(0.27, 0.32),
        heart_x=heart_hw * u(0.28, 0.40),
        medi_hw=u(0.10, 0.13),
        knob_r=u(0.05, 0.065),
        spine_x=float(rng.normal(0, 0.008)),
        rib_pitch=u(0.078, 0.09),
        clav_y=u(-0.80, -0.72),
        bone_density=float(u(0.95, 1.15) - 0.25 * old),
        breast=u(0.10, 0.20) if sex == "F" else 0.0,
        ap_half=u(0.76, 0.86),
        kyphosis=u(0.0, 0.03) + 0.02 * old,
        vessel_seed=int(rng.integers(0, 2**31)),
    )


@dataclass
class Scene:
    """The layers of one projection plus the geometry findings need to place themselves."""

    view: str
    canvas: Canvas
    anatomy: Anatomy
    tissue: np.ndarray
    air: np.ndarray
    vessels: np.ndarray
    bone: np.ndarray
    metal: np.ndarray
    lung: np.ndarray  # soft mask of the lung fields (max 1)
    outlines: dict  # side -> lung outline points (frontal) / "both" (lateral)

    # ---- placement of a finding given in view-independent "chest" coordinates ----
    def place(self, side: int, u: float, v: float, w: float) -> tuple[float, float]:
        """A point of the chest in this view.

        ``side`` -1 is the patient's right, +1 the left; ``u`` 0..1 runs from the
        mediastinum to the lateral chest wall, ``v`` 0..1 from the apex to the
        diaphragm, ``w`` 0..1 from anterior to posterior. The frontal view uses
        (side, u, v), the lateral view (w, v): the same lesion lands in matching
        places in both projections.
        """
        a = self.anatomy
        if self.view == "frontal":
            inner = a.medi_hw + 0.03
            q = inner + u * (0.92 * a.thorax_w - inner)
            top = a.apex_y + 0.07
            bottom = frontal_dome(a, side, q) - 0.03
            return side * q, top + v * (bottom - top)
        x = lateral_front(a) + 0.06 + w * (lateral_back(a) - 0.06 - (lateral_front(a) + 0.06))
        top = a.apex_y + 0.06
        bottom = lateral_dome(a, x) - 0.03
        return x, top + v * (bottom - top)


# ---------------------------------------------------------------------------
# Frontal geometry
# ---------------------------------------------------------------------------

def frontal_dome_peak(a: Anatomy, side: int) -> float:
    lift = -0.05 if a.portable else 0.0
    return (a.dome_r if side < 0 else a.dome_l) + lift


def frontal_dome(a: Anatomy, side: int, q):
    """y of the hemidiaphragm at distance ``q`` from the midline (q >= 0)."""
    peak = frontal_dome_peak(a, side)
    q_peak = 0.5 * a.thorax_w
    lateral = np.clip((q - q_peak) / (a.thorax_w - q_peak), 0, None)
    medial = np.clip((q_peak - q) / q_peak, 0, None)
    return peak + a.cp_drop * lateral ** 1.8 + 0.10 * medial ** 1.6


def lung_outline(a: Anatomy, side: int) -> list[tuple[float, float]]:
    """Closed outline of one lung field on the frontal view (points in x, y)."""
    W = a.thorax_w
    q_med = a.medi_hw + 0.01
    top = a.apex_y
    arch_cy = top + 0.17
    q_lat_top = 0.80 * W
    q_c, rx = (q_med + q_lat_top) / 2, (q_lat_top - q_med) / 2
    pts = []
    for th in np.linspace(np.pi, 0, 14):  # apex arch, medial to lateral
        pts.append((q_c + rx * np.cos(th), arch_cy - 0.17 * np.sin(th)))
    cp_y = frontal_dome(a, side, W)
    for s in np.linspace(0, 1, 8)[1:]:  # lateral wall bowing out to the costophrenic angle
        pts.append((W * (0.80 + 0.20 * np.sin(np.pi * s / 2)), arch_cy + s * (cp_y - arch_cy)))
    for q in np.linspace(W, 0.06, 14)[1:]:  # the dome, lateral to medial
        pts.append((q, float(frontal_dome(a, side, q))))
    pts.append((q_med, arch_cy - 0.02))
    scale = a.ptx_collapse.get(side)
    if scale:
        # A collapsed lung shrinks towards its hilum.
        hx, hy = a.medi_hw + 0.08, 0.0
        pts = [(hx + (q - hx) * scale, hy + (y - hy) * scale) if y < 0.15 else (q, y) for q, y in pts]
    return [(side * q, y) for q, y in pts]


def render_frontal(a: Anatomy, canvas: Canvas) -> Scene:
    """The frontal (PA/AP) projection: soft tissue, lungs, mediastinum, airways, vessels and bones, in that order
    (the order the random draws are taken in)."""
    n, W = canvas.size, a.thorax_w
    tissue = _frontal_soft_tissue(a, canvas)
    lung, outlines, air = _frontal_lungs(a, canvas)
    _frontal_mediastinum(a, canvas, air, tissue)

    # Airways and stomach gas.
    carina = (a.spine_x - 0.005, -0.17)
    airway = [([(a.spine_x - 0.01, -1.1), carina], 0.055, 0.35)]
    for side in (-1, 1):
        airway.append(([carina, (side * (a.medi_hw + 0.06), -0.04)], 0.035, 0.30))
    air += strokes(canvas, airway, blur_px=max(0.7, n / 300))
    add_ellipse(air, canvas, Ellipse(0.5 * W, frontal_dome_peak(a, 1) + 0.12, 0.09, 0.055), 0.45, profile="dome")

    vessels = _vessel_tree(a, canvas, side_points={s: (s * (a.medi_hw + 0.08), -0.05) for s in (-1, 1)},
                           lateral_reach=0.8 * W, view="frontal")

    bone = canvas.zeros()
    _frontal_spine(a, canvas, bone)
    for side in (-1, 1):
        _frontal_ribs(a, canvas, bone, side)
        _clavicle(a, canvas, bone, side)
        _scapula_and_humerus(a, canvas, bone, side)
    bone *= a.bone_density

    return Scene("frontal", canvas, a, tissue, air, vessels, bone, canvas.zeros(), lung, outlines)


def _frontal_soft_tissue(a: Anatomy, canvas: Canvas) -> np.ndarray:
    """A cylinder-like thickness profile under a neck / shoulder / abdomen outline, with shoulders, the top of the
    arms and breasts."""
    xs = canvas.xs[None, :]
    knots_y = [-1.2, -0.95, -0.84, -0.66, 0.0, 1.2]
    knots_w = [0.22, 0.25, a.body_w + 0.14, a.body_w + 0.05, a.body_w, a.body_w + 0.05]
    half = np.interp(canvas.ys, knots_y, knots_w).astype(F32)[:, None]
    tissue = (np.clip(1 - (xs / half) ** 2, 0, 1) ** 0.35).astype(F32)
    for side in (-1, 1):
        add_ellipse(tissue, canvas, Ellipse(side * (a.body_w + 0.10), -0.62, 0.13, 0.32), 0.35, profile="dome")
        if a.breast:
            add_ellipse(tissue, canvas,
                        Ellipse(side * 0.55 * a.thorax_w, frontal_dome_peak(a, side) + 0.02, 0.26, 0.17),
                        a.breast, profile="gauss")
    return tissue


def _frontal_lungs(a: Anatomy, canvas: Canvas):
    """Lung masks (polygons blurred to soft edges), their outlines, and the air they hold, with a depth profile:
    thin at the apex and medially, thick laterally and at the base."""
    xs, ys = canvas.xs[None, :], canvas.ys[:, None]
    W = a.thorax_w
    outlines = {side: lung_outline(a, side) for side in (-1, 1)}
    lung = polygons(canvas, [(outlines[s], 1.0) for s in (-1, 1)], blur_px=max(0.8, canvas.size / 256))
    q = np.abs(xs)
    depth = 0.60 + 0.40 * np.sqrt(np.clip(1 - ((q - 0.5 * W) / (0.55 * W)) ** 2, 0, 1))
    apex_fade = np.sqrt(np.clip((ys - a.apex_y) / 0.35, 0.25, 1.0))
    return lung, outlines, (lung * depth * apex_fade * 0.72 * a.air).astype(F32)


def _frontal_mediastinum(a: Anatomy, canvas: Canvas, air: np.ndarray, tissue: np.ndarray) -> None:
    """Heart, aortic knob, descending aorta and hila: soft tissue that displaces lung air (``air`` and ``tissue``
    are updated in place)."""
    heart_mag = 1.08 if a.portable else 1.0
    heart = np.zeros_like(air)
    base = frontal_dome_peak(a, 1)
    hw, hh = a.heart_hw * heart_mag, a.heart_hh * heart_mag
    # Left ventricle (tilted towards the apex) and right atrium (the right heart border).
    add_ellipse(heart, canvas, Ellipse(a.heart_x + 0.12 * hw, base - 0.55 * hh, 0.86 * hw, hh, angle=0.45), 1.0)
    add_ellipse(heart, canvas, Ellipse(a.heart_x - 0.52 * hw, base - 0.45 * hh, 0.46 * hw, 0.80 * hh), 1.0)
    knob_x, knob_y = a.medi_hw + 0.005, -0.30
    add_ellipse(heart, canvas, Ellipse(knob_x, knob_y, a.knob_r, a.knob_r * 1.1), 1.0)
    ys_ao = np.linspace(knob_y, frontal_dome_peak(a, 1), 12)
    # A tortuous aorta bulges out to the left in one or two waves below the knob.
    aorta_edge = [(a.spine_x + 0.105 + a.aorta_wave * (0.7 + 0.6 * np.sin(2.0 * np.pi * (y - knob_y) / 0.45))
                   * np.clip((y - knob_y) / 0.15, 0, 1), y) for y in ys_ao]
    aorta_poly = [(a.spine_x + 0.0, knob_y)] + aorta_edge + [(a.spine_x + 0.0, ys_ao[-1])]
    heart += polygons(canvas, [(aorta_poly, 1.0)], blur_px=0)  # blurred with the heart below
    np.clip(heart, 0, 1, out=heart)
    heart = ndimage.gaussian_filter(heart, max(0.8, canvas.size / 200), truncate=2.5)
    air *= 1 - 0.85 * heart
    tissue += 0.06 * heart
    for side in (-1, 1):
        add_ellipse(tissue, canvas, Ellipse(side * (a.medi_hw + 0.08), -0.05, 0.055 * a.hilum, 0.085 * a.hilum),
                    0.16, profile="gauss")


def _vessel_tree(a: Anatomy, canvas: Canvas, side_points, lateral_reach: float, view: str) -> np.ndarray:
    """Branching lung vessels from the hila, thinning towards the periphery.

    Ten wandering branches per hilum fan out from up-and-out to down-and-out,
    each with two side branches; the random walk is drawn in one go per side.
    """
    rng = np.random.default_rng([a.vessel_seed, 0 if view == "frontal" else 1])
    n, steps = 10, 5
    lines = []
    for side, (hx, hy) in side_points.items():
        base = np.deg2rad(-75 + 150 * (np.arange(n) + rng.uniform(0.1, 0.9, n)) / n)
        length = lateral_reach * rng.uniform(0.75, 1.05, n) * np.where(np.abs(base) > 1.0, 0.8, 1.0)
        heading = base[:, None] + np.cumsum(rng.normal(0, 0.25, (n, steps)), axis=1)
        dx = side * np.cos(heading) * (length / steps)[:, None]
        dy = np.sin(heading) * (length / steps)[:, None]
        xs = hx + np.concatenate([np.zeros((n, 1)), np.cumsum(dx, axis=1)], axis=1)
        ys = hy + np.concatenate([np.zeros((n, 1)), np.cumsum(dy, axis=1)], axis=1)
        turn = rng.choice([-1, 1], (n, 2)) * rng.uniform(0.4, 0.8, (n, 2))
        for b in range(n):
            for i in range(steps):
                lines.append(([(xs[b, i], ys[b, i]), (xs[b, i + 1], ys[b, i + 1])], 0.022 * (1 - i / 5.5),
                              1.0 - 0.12 * i))
            for j, i in enumerate((2, 3)):  # two side branches
                h = heading[b, i] + side * turn[b, j]
                end = (xs[b, i] + side * np.cos(h) * length[b] * 0.3, ys[b, i] + np.sin(h) * length[b] * 0.3)
                lines.append(([(xs[b, i], ys[b, i]), end], 0.008, 0.6))
    out = strokes(canvas, lines, blur_px=max(0.7, canvas.size / 220))
    return (out * a.markings).astype(F32)


def _frontal_spine(a: Anatomy, canvas: Canvas, bone: np.ndarray) -> None:
    w = canvas.window(a.spine_x - 0.09, -1.0, a.spine_x + 0.09, 1.0)
    rows, cols, X, Y = w
    pitch = 0.085
    rel = (Y + 1.0) / pitch
    level = np.floor(rel)
    frac = rel - level
    loss = np.zeros_like(frac)
    for lvl, amount in a.compressed_vertebra:
        loss = np.where(level == lvl + 6, amount, loss)  # thoracic level lvl, counted from T1
    half_gap = 0.10 + 0.40 * loss
    body_h = soft_inside(np.abs(frac - 0.5) * pitch - (0.5 - half_gap) * pitch, canvas.edge)
    body_w = soft_inside(np.abs(X - a.spine_x) - 0.055 * (1 + 0.35 * loss), canvas.edge)
    body = body_h * body_w
    dx = np.abs(np.abs(X - a.spine_x) - 0.038) / 0.013
    dy = (frac - 0.45) * pitch / 0.019
    ring = np.sqrt(dx * dx + dy * dy)
    pedicles = soft_inside(np.abs(ring - 1.0) * 0.015 - 0.005, canvas.edge)
    bone[rows, cols] += 0.11 * body + 0.9 * loss * body + 0.07 * pedicles


def rib_point(a: Anatomy, side: int, k: float, t: float) -> tuple[float, float]:
    """Where posterior rib ``k`` (0 = first) is at fraction ``t`` of its course (0 spine, 1 chest wall)."""
    s0, s1 = a.rib_pitch, 0.004
    q = 0.03 + t * (a.thorax_w - 0.03)
    y = a.apex_y - 0.03 + (-0.06 * t + 0.34 * t * t) + s0 * k + s1 * k * k
    return a.spine_x + side * q, y


def _frontal_ribs(a: Anatomy, canvas: Canvas, bone: np.ndarray, side: int) -> None:
    """Posterior ribs as a family of curved bands, plus fainter anterior ribs.

    The rib index is a continuous field, so all ribs of a side cost one pass;
    a fracture shifts the field locally (step-off) and cuts a gap in the band.
    """
    W = a.thorax_w
    x0, x1 = (-(W + 0.14), -0.02) if side < 0 else (0.02, W + 0.14)
    w = canvas.window(x0, a.apex_y - 0.12, x1, frontal_dome(a, side, W) + 0.15)
    if w is None:
        return
    rows, cols, X, Y = w
    q = side * (X - a.spine_x)
    t = (q - 0.03) / (W - 0.03)
    s0, s1 = a.rib_pitch, 0.004
    y0 = a.apex_y - 0.03
    yy = Y - (-0.06 * t + 0.34 * t * t) - y0

    def rib_index(u):
        k = (-s0 + np.sqrt(np.maximum(s0 * s0 + 4 * s1 * u, 0))) / (2 * s1)
        return np.where(u < 0, u / s0, k)

    k = rib_index(yy)
    breaks = [(k_f, t_f, step, gap) for br_side, k_f, t_f, step, gap in a.rib_breaks if br_side == side]
    for k_f, t_f, step, _gap in breaks:
        # The lateral fragment of rib k_f is displaced by ``step`` (a step-off at the break).
        fragment = (np.abs(k - k_f) < 0.7) & (t > t_f)
        k = np.where(fragment, rib_index(yy - step), k)
    pitch = s0 + 2 * s1 * np.clip(k, 0, None)
    frac = k - np.round(k)
    band = soft_inside(np.abs(frac) * pitch - 0.19 * pitch, canvas.edge)
    cortex = soft_inside(np.abs(np.abs(frac) * pitch - 0.17 * pitch) - 0.008, canvas.edge)
    valid = (k > -0.5) & (k < 10.5) & (t > 0.0)
    fade = np.clip((1.16 - t) / 0.1, 0, 1) * np.clip(t / 0.08, 0, 1)
    below = Y - frontal_dome(a, side, np.clip(q, 0, W))  # lower ribs fade out over the abdomen
    fade = fade * np.clip(1 - below / 0.25, 0.35, 1)
    ribs = (0.07 * band + 0.045 * cortex) * valid * fade
    for k_f, t_f, _step, gap in breaks:
        cut = soft_inside(np.abs(t - t_f) * W - gap / 2, canvas.edge)
        ribs = ribs * (1 - cut * (np.abs(k - k_f) < 0.7))
    # Anterior ribs slope down towards the midline and fade out at the cartilage.
    ya = Y - 0.22 * (1 - t) - (a.apex_y + 0.10)
    ka = ya / (1.25 * s0)
    fa = ka - np.round(ka)
    band_a = soft_inside(np.abs(fa) * 1.25 * s0 - 0.22 * 1.25 * s0, canvas.edge)
    valid_a = (ka > -0.5) & (ka < 6.5) & (t > 0.3) & (t < 1.1)
    ribs = ribs + 0.04 * band_a * valid_a * np.clip((t - 0.3) / 0.2, 0, 1)
    bone[rows, cols] += ribs.astype(F32)


def _clavicle(a: Anatomy, canvas: Canvas, bone: np.ndarray, side: int) -> None:
    W = a.thorax_w
    lift = -0.06 if a.portable else 0.0
    y_med, y_lat = a.clav_y + 0.08 + lift, a.clav_y - 0.06 + lift * 1.5
    q0, q1 = 0.05, 0.85 * W + 0.12
    x0, x1 = sorted((side * q0, side * q1))
    w = canvas.window(x0, min(y_med, y_lat) - 0.08, x1, max(y_med, y_lat) + 0.08)
    if w is None:
        return
    rows, cols, X, Y = w
    qq = side * X
    s = np.clip((qq - q0) / (q1 - q0), 0, 1)
    centre = y_med + (y_lat - y_med) * s - 0.025 * np.sin(2 * np.pi * s)
    for br_side, s_f, step, _gap in a.clavicle_breaks:
        if br_side == side:
            centre = centre + step * (s > s_f) * np.clip((s - s_f) / 0.05, 0, 1)
    thick = 0.019 * (1.3 - 0.4 * s)
    inside = soft_inside(np.abs(Y - centre) - thick, canvas.edge) * ((qq > q0) & (qq < q1))
    end_fade = np.clip((q1 - qq) / 0.03, 0, 1)
    clav = 0.26 * inside * end_fade
    for br_side, s_f, _step, gap in a.clavicle_breaks:
        if br_side == side:
            clav = clav * (1 - soft_inside(np.abs(s - s_f) * (q1 - q0) - gap / 2, canvas.edge))
    bone[rows, cols] += clav.astype(F32)


def _scapula_and_humerus(a: Anatomy, canvas: Canvas, bone: np.ndarray, side: int) -> None:
    W = a.thorax_w
    medial = 0.55 * W if a.portable else 0.80 * W  # AP films project the scapulae over the lungs
    tri = [(side * medial, -0.70), (side * (medial + 0.06), -0.18), (side * (W + 0.12), -0.62),
           (side * (W + 0.05), -0.78)]
    bone += polygons(canvas, [(tri, 0.06)], blur_px=max(1.0, canvas.size / 200))
    hx = side * (a.body_w + 0.06)
    add_ellipse(bone, canvas, Ellipse(hx, -0.74, 0.085, 0.095), 0.14)
    shaft = canvas.window(hx - 0.06, -0.74, hx + 0.06, 0.3)
    if shaft is not None:
        rows, cols, X, Y = shaft
        step = 0.0
        gap_mask = 0.0
        for br_side, br_step in a.humerus_breaks:
            if br_side == side:
                step = br_step * (Y > -0.60)
                gap_mask = soft_inside(np.abs(Y + 0.60) - 0.012, canvas.edge)
        inside = soft_inside(np.abs(X - hx - side * step) - 0.045, canvas.edge) * (Y > -0.70)
        bone[rows, cols] += (0.12 * inside * (1 - gap_mask)).astype(F32)


# ---------------------------------------------------------------------------
# Lateral geometry (anterior on the left)
# ---------------------------------------------------------------------------

def lateral_front(a: Anatomy) -> float:
    return -(a.ap_half - 0.10)


def lateral_back(a: Anatomy) -> float:
    return 0.70 * a.ap_half


def lateral_dome(a: Anatomy, x, which: str = "right"):
    """y of a hemidiaphragm on the lateral view: high in front, deep posterior sulcus."""
    peak = a.dome_r - 0.04 + (0.045 if which == "left" else 0.0) - (0.05 if a.portable else 0.0)
    x_peak = -0.15 * a.ap_half
    front, back = lateral_front(a), lateral_back(a)
    ant = np.clip((x_peak - x) / (x_peak - front), 0, None)
    post = np.clip((x - x_peak) / (back - x_peak), 0, None)
    flat = a.cp_drop / 0.24  # emphysema flattens the domes (smaller cp_drop)
    return peak - 0.03 + 0.12 * flat * ant ** 2 + 0.36 * flat * post ** 1.7


def lateral_outline(a: Anatomy, which: str) -> list[tuple[float, float]]:
    front, back = lateral_front(a), lateral_back(a)
    top = a.apex_y - 0.02
    pts = []
    for th in np.linspace(np.pi, 0, 12):  # apex arch, front to back
        pts.append((-0.10 + 0.55 * a.ap_half * np.cos(th) * 0.95, top + 0.16 - 0.16 * np.sin(th)))
    y_sulcus = float(lateral_dome(a, back, which))
    for s in np.linspace(0, 1, 7)[1:]:  # posterior wall
        pts.append((0.42 * a.ap_half + (back - 0.42 * a.ap_half) * np.sin(np.pi * s / 2),
                    top + 0.16 + s * (y_sulcus - top - 0.16)))
    for x in np.linspace(back, front, 16)[1:]:  # diaphragm, back to front
        pts.append((x, float(lateral_dome(a, x, which))))
    pts.append((front + 0.06, top + 0.35))  # retrosternal line up to the apex
    return pts


def render_lateral(a: Anatomy, canvas: Canvas) -> Scene:
    """The lateral projection: soft tissue, the merged lung field, mediastinum, trachea and stomach gas, vessels
    and bones, in that order (the order the random draws are taken in)."""
    xs, ys = canvas.xs[None, :], canvas.ys[:, None]
    n, D = canvas.size, a.ap_half
    blur = max(0.8, n / 256)
    tissue = _lateral_soft_tissue(a, canvas)

    # One merged lung field; the left hemidiaphragm is a little lower, so between the two
    # domes only one lung holds air.
    outlines = {"right": lateral_outline(a, "right"), "left": lateral_outline(a, "left")}
    lung = polygons(canvas, [(outlines["right"], 0.5), (outlines["left"], 0.5)], blur_px=blur)
    depth = 0.65 + 0.35 * np.sqrt(np.clip(1 - (xs / (0.8 * D)) ** 2, 0, 1))
    apex_fade = np.sqrt(np.clip((ys - a.apex_y) / 0.35, 0.3, 1.0))
    air = (lung * depth * apex_fade * 0.74 * a.air).astype(F32)
    _lateral_mediastinum(a, canvas, air, tissue)

    trachea = [(-0.02, -1.1), (0.06 * D, -0.55), (0.10 * D, -0.18)]
    air += strokes(canvas, [(trachea, 0.055, 0.33)], blur_px=blur)
    add_ellipse(air, canvas, Ellipse(0.10 * D, float(lateral_dome(a, 0.1 * D, "left")) + 0.12, 0.10, 0.05),
                0.35, profile="dome")

    vessels = _vessel_tree(a, canvas, side_points={-1: (0.02 * D, -0.08), 1: (0.02 * D, -0.08)},
                           lateral_reach=0.55 * D, view="lateral")
    return Scene("lateral", canvas, a, tissue, air, vessels, _lateral_bones(a, canvas), canvas.zeros(), lung,
                 outlines)


def _lateral_soft_tissue(a: Anatomy, canvas: Canvas) -> np.ndarray:
    """The body's thickness seen from the side, breasts, and the raised arms overlapping the upper chest."""
    xs, D = canvas.xs[None, :], a.ap_half
    knots_y = [-1.2, -0.9, -0.6, -0.3, 0.2, 1.2]
    centre = np.interp(canvas.ys, knots_y, [0.28, 0.22, 0.10, 0.03, 0.01, 0.03]).astype(F32)[:, None]
    half = np.interp(canvas.ys, knots_y, [0.45, 0.55, D - 0.02, D + 0.06, D + 0.08, D + 0.12]).astype(F32)[:, None]
    tissue = (1.05 * np.clip(1 - ((xs - centre) / half) ** 2, 0, 1) ** 0.4).astype(F32)
    if a.breast:
        add_ellipse(tissue, canvas, Ellipse(-D - 0.05, a.dome_r - 0.02, 0.12, 0.20), a.breast * 1.6, profile="gauss")
    arms = strokes(canvas, [([(0.08, -0.30), (-0.10, -0.75), (-0.22, -1.15)], 0.30, 0.30)], blur_px=canvas.size / 40)
    tissue += arms
    return tissue


def _lateral_mediastinum(a: Anatomy, canvas: Canvas, air: np.ndarray, tissue: np.ndarray) -> None:
    """Heart, aorta, hila and retrosternal filling seen from the side (``air`` and ``tissue`` updated in place)."""
    D, blur = a.ap_half, max(0.8, canvas.size / 256)
    heart = np.zeros_like(air)
    heart_scale = a.heart_hw / (0.43 * a.thorax_w) * (1.06 if a.portable else 1.0)
    hx, hy = -0.34 * D, float(lateral_dome(a, -0.34 * D)) - 0.08
    add_ellipse(heart, canvas,
                Ellipse(hx + 0.10 * (heart_scale - 1), hy, 0.32 * heart_scale, 0.25 * heart_scale ** 0.5, angle=-0.6),
                1.0)
    add_ellipse(heart, canvas, Ellipse(hx + 0.12 * heart_scale, hy + 0.06, 0.20 * heart_scale, 0.17, angle=0.3), 0.8)
    aorta = [(-0.20 * D, hy - 0.20), (-0.10 * D, -0.40), (0.08 * D, -0.48), (0.30 * D, -0.38),
             (0.38 * D, -0.10), (0.40 * D, 0.25), (0.40 * D, 0.6)]
    heart += strokes(canvas, [(aorta, 0.10, 0.7)], blur_px=blur)
    add_ellipse(heart, canvas, Ellipse(0.02 * D, -0.10, 0.09 * a.hilum, 0.11 * a.hilum), 0.45, profile="gauss")
    if a.retrosternal_fill:
        add_ellipse(heart, canvas, Ellipse(-0.50 * D, -0.25, 0.16, 0.26), a.retrosternal_fill, profile="dome")
    np.clip(heart, 0, 1, out=heart)
    heart = ndimage.gaussian_filter(heart, max(0.8, canvas.size / 200), truncate=2.5)
    air *= 1 - 0.50 * heart
    tissue += 0.06 * heart


def _lateral_bones(a: Anatomy, canvas: Canvas) -> np.ndarray:
    """Spine, sternum and manubrium, ribs and humeri, scaled by the patient's bone density."""
    D, blur = a.ap_half, max(0.8, canvas.size / 256)
    bone = canvas.zeros()
    _lateral_spine(a, canvas, bone)
    sternum = [(-D + 0.06, -0.56), (-D + 0.04, -0.25), (-D + 0.02, 0.08)]
    bone += strokes(canvas, [(sternum, 0.032, 0.16)], blur_px=blur)
    add_ellipse(bone, canvas, Ellipse(-D + 0.07, -0.58, 0.035, 0.06), 0.13)
    _lateral_ribs(a, canvas, bone)
    humeri = [([(0.10, -0.40), (-0.05, -0.80), (-0.14, -1.1)], 0.06, 0.12),
              ([(0.16, -0.42), (0.02, -0.84), (-0.06, -1.1)], 0.06, 0.12)]
    bone += strokes(canvas, humeri, blur_px=blur)
    bone *= a.bone_density
    return bone


def lateral_spine_x(a: Anatomy, y):
    """Centre of the vertebral bodies: a posterior bow over the thoracic spine."""
    base = 0.57 * a.ap_half + 0.02 * y
    bow = a.kyphosis * np.clip(1 - ((y + 0.2) / 0.85) ** 2, 0, None)
    return base + bow


def _lateral_spine(a: Anatomy, canvas: Canvas, bone: np.ndarray) -> None:
    x_lo = lateral_spine_x(a, -0.2) - 0.1 - a.kyphosis
    w = canvas.window(x_lo - 0.1, -1.0, 0.60 * a.ap_half + 0.35 + a.kyphosis, 1.0)
    rows, cols, X, Y = w
    cx = lateral_spine_x(a, Y)
    u = X - cx  # negative = anterior
    pitch = 0.088
    rel = (Y + 1.0) / pitch
    level = np.floor(rel)
    frac = rel - level
    thoracic = np.clip(1 - ((Y + 0.2) / 0.8) ** 2, 0, 1)
    wedge = a.vertebral_wedge * thoracic * np.clip(-u / 0.075, 0, 1)
    dense = np.zeros_like(wedge)
    for lvl, amount in a.compressed_vertebra:
        hit = level == lvl + 6
        wedge = np.where(hit, wedge + amount * np.clip(0.8 - u / 0.12, 0, 1.2), wedge)
        dense = np.where(hit, amount, dense)
    half_gap = 0.10 + 0.40 * np.clip(wedge, 0, 0.9)
    body = soft_inside(np.abs(frac - 0.5) - (0.5 - half_gap), canvas.edge / pitch)
    body = body * soft_inside(np.abs(u) - 0.072, canvas.edge)
    cortex = body * (1 - soft_inside(np.abs(u) - 0.055, canvas.edge))
    post = np.exp(-(((u - 0.16) / 0.05) ** 2) - (((frac - 0.6) / 0.25) ** 2))
    bone[rows, cols] += (0.13 * body + 0.6 * dense * body + 0.06 * cortex + 0.06 * post).astype(F32)


def _lateral_ribs(a: Anatomy, canvas: Canvas, bone: np.ndarray) -> None:
    w = canvas.window(-0.2, a.apex_y, 0.85 * a.ap_half + 0.1, 0.6)
    rows, cols, X, Y = w
    sx = lateral_spine_x(a, Y)
    phase = (Y - 0.45 * (sx - X) - a.apex_y) / (1.05 * a.rib_pitch)
    frac = phase - np.round(phase)
    band = soft_inside(np.abs(frac) - 0.18, canvas.edge / a.rib_pitch)
    weight = np.clip((X + 0.2) / 0.6, 0, 1) * (phase > 0) * (phase < 11)
    ribs = 0.06 * band * weight
    bone[rows, cols] += ribs.astype(F32)
