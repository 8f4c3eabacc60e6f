"""One visual signature per finding: where it is, what shape, what texture.

Each :class:`Signature` has

- ``params(rng)``: the lesion's view-independent description (side, position
  in chest coordinates, size, severity), drawn once per study (or per patient
  for chronic findings), so the frontal and the lateral image show the same
  lesion in matching places;
- ``adjust(anatomy, p)``: changes to the anatomy (a wider heart, flatter
  domes, a broken rib), applied before the scene is drawn;
- ``frontal(scene, p, rng)`` / ``lateral(scene, p, rng)``: what is drawn on
  each view (``rng`` only varies the texture from image to image);
- ``views``: the projections in which the finding is visible at all. Findings
  visible in one view only are what makes fusing a study's views pay off.

Severity is drawn per case, so subtle cases exist and metrics do not saturate.
Related findings share drawing code (every fracture is a cortical break, every
atelectasis a plate of collapsed lung, hydropneumothorax is pneumothorax plus
an effusion with a flat air-fluid level). docs/synthetic.md lists them all.

Coordinates: see :meth:`anatomy.Scene.place` (side, u medial->lateral,
v apex->base, w anterior->posterior).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .anatomy import (frontal_dome, frontal_dome_peak, lateral_back, lateral_dome, lateral_front,
                      lateral_spine_x, lung_outline, rib_point)
from .drawing import F32, add_ellipse, add_ring, polygons, smooth_noise, soft_inside, strokes

BOTH = ("frontal", "lateral")
FRONTAL_ONLY = ("frontal",)
LATERAL_ONLY = ("lateral",)
# On the lateral view the two lungs are superimposed: a process in one lung only
# removes part of the air along the ray.
ONE_LUNG_ON_LATERAL = 0.7


@dataclass(frozen=True)
class Signature:
    name: str
    summary: str  # a few words, written to synth_meta.json and the docs
    views: tuple
    params: Callable
    adjust: Callable | None = None
    frontal: Callable | None = None
    lateral: Callable | None = None
    persistent: bool = False  # drawn once per patient (anatomical variants, chronic changes)


# ---------------------------------------------------------------------------
# Small helpers shared by the signatures
# ---------------------------------------------------------------------------

def severity(rng, low=0.45):
    """Strength of the finding: most cases clear, some subtle."""
    return float(rng.uniform(low, 1.0))


def side_of(rng, right=0.5):
    return -1 if rng.random() < right else 1


def spot(rng, u=(0.15, 0.9), v=(0.15, 0.9), w=(0.1, 0.9), right=0.5):
    return dict(side=side_of(rng, right), u=float(rng.uniform(*u)), v=float(rng.uniform(*v)),
                w=float(rng.uniform(*w)))


def at(scene, p, **override):
    q = {**p, **override}
    return scene.place(q["side"], q["u"], q["v"], q["w"])


def opacify(scene, field, strength):
    """Fluid, cells or collapse replacing the air of the lung."""
    scene.air *= 1 - np.clip(strength * field, 0, 1)


def densify(scene, field, value):
    scene.tissue += (value * field).astype(F32)


def lucency(scene, field, value):
    scene.air += (value * field).astype(F32)


def blob(scene, x, y, a, b, value=1.0, angle=0.0, profile="gauss"):
    field = scene.canvas.zeros()
    add_ellipse(field, scene.canvas, x, y, a, b, value, angle=angle, profile=profile)
    return field


def one_lung(scene):
    return ONE_LUNG_ON_LATERAL if scene.view == "lateral" else 1.0


def patch_texture(scene, rng, cells, floor=0.35):
    """Mottled texture in [floor, 1]: ill-defined opacities are not uniform."""
    noise = smooth_noise(rng, scene.canvas, cells)
    return np.clip(floor + (1 - floor) * (0.6 + 0.5 * noise), 0, 1)


# ---------------------------------------------------------------------------
# Lung opacities
# ---------------------------------------------------------------------------

def p_lung_opacity(rng):
    n = 1 + int(rng.random() < 0.35)
    return dict(sev=severity(rng), patches=[dict(spot(rng, u=(0.25, 0.8), v=(0.25, 0.85)),
                                                 a=float(rng.uniform(0.11, 0.2)), b=float(rng.uniform(0.09, 0.16)))
                                            for _ in range(n)])


def d_lung_opacity(scene, p, rng):
    texture = patch_texture(scene, rng, cells=7)
    for patch in p["patches"]:
        x, y = at(scene, patch)
        field = blob(scene, x, y, patch["a"], patch["b"])
        opacify(scene, field * texture, (0.45 + 0.45 * p["sev"]) * one_lung(scene))


def p_consolidation(rng):
    return dict(spot(rng, u=(0.3, 0.7), v=(0.35, 0.85)), sev=severity(rng, 0.55),
                a=float(rng.uniform(0.13, 0.2)), b=float(rng.uniform(0.10, 0.16)), angle=float(rng.uniform(-0.5, 0.5)),
                bronchi=[float(a) for a in rng.uniform(-np.pi, np.pi, size=4)])


def d_consolidation(scene, p, rng):
    """Dense, homogeneous lobar opacity with air bronchograms."""
    x, y = at(scene, p)
    field = 1.7 * blob(scene, x, y, p["a"] * 1.05, p["b"] * 1.05, angle=p["angle"])
    field = np.clip(field * patch_texture(scene, rng, cells=14, floor=0.6), 0, 1)
    opacify(scene, field, (0.7 + 0.3 * p["sev"]) * one_lung(scene))
    lines = []
    for ang in p["bronchi"]:
        end = (x + 0.8 * p["a"] * np.cos(ang), y + 0.8 * p["b"] * np.sin(ang))
        mid = ((x + end[0]) / 2 + 0.02, (y + end[1]) / 2)
        lines.append(([(x, y), mid, end], 0.010, 1.0))
    lucency(scene, strokes(scene.canvas, lines) * field, 0.2 * p["sev"])


def p_pneumonia(rng):
    centre = spot(rng, u=(0.3, 0.75), v=(0.45, 0.9))
    n = int(rng.integers(6, 12))
    return dict(centre, sev=severity(rng), both=bool(rng.random() < 0.25),
                blobs=[(float(dx), float(dy), float(r)) for dx, dy, r in
                       zip(rng.normal(0, 0.08, n), rng.normal(0, 0.07, n), rng.uniform(0.035, 0.06, n))])


def d_pneumonia(scene, p, rng):
    """Multifocal fluffy (acinar) opacities clustered in one zone."""
    sides = (p["side"], -p["side"]) if p["both"] else (p["side"],)
    field = scene.canvas.zeros()
    for side in sides:
        x, y = at(scene, p, side=side)
        for dx, dy, r in p["blobs"]:
            add_ellipse(field, scene.canvas, x + dx, y + dy, r, r * 0.9, 1.0, profile="gauss")
    opacify(scene, np.clip(field, 0, 1), (0.6 + 0.35 * p["sev"]) * one_lung(scene))


def p_infiltration(rng):
    return dict(spot(rng, u=(0.3, 0.75), v=(0.3, 0.8)), sev=severity(rng), size=float(rng.uniform(0.17, 0.25)))


def d_infiltration(scene, p, rng):
    """Reticulonodular, streaky interstitial pattern: a net of lines and small nodules."""
    x, y = at(scene, p)
    envelope = blob(scene, x, y, p["size"], p["size"] * 1.1)
    noise = smooth_noise(rng, scene.canvas, 24)
    net = np.exp(-(noise / 0.3) ** 2)
    dots = np.clip((smooth_noise(rng, scene.canvas, 30) - 1.0) * 2, 0, 1)
    opacify(scene, envelope * (0.35 + 0.6 * net + 0.5 * dots), (0.65 + 0.35 * p["sev"]) * one_lung(scene))


def p_edema(rng):
    return dict(sev=severity(rng), kerley=[(float(v), float(l)) for v, l in
                                           zip(rng.uniform(0.0, 1.0, 8), rng.uniform(0.04, 0.07, 8))])


def d_edema(scene, p, rng):
    """Bilateral perihilar haze ("bat wings") with Kerley B lines at the bases."""
    a = scene.anatomy
    texture = patch_texture(scene, rng, cells=8, floor=0.6)
    if scene.view == "frontal":
        field = scene.canvas.zeros()
        for side in (-1, 1):
            add_ellipse(field, scene.canvas, side * (a.medi_hw + 0.10), 0.0, 0.28, 0.32, 1.0, profile="gauss")
        opacify(scene, field * texture, 0.5 * p["sev"] + 0.3)
        lines = []
        for i, (v, length) in enumerate(p["kerley"]):
            side = -1 if i % 2 else 1
            q = 0.95 * a.thorax_w
            y = frontal_dome(a, side, q) - 0.05 - 0.25 * v
            lines.append(([(side * q, y), (side * (q - length), y)], 0.01, 1.0))
        densify(scene, strokes(scene.canvas, lines) * scene.lung, 0.35 * p["sev"] + 0.1)
    else:
        field = blob(scene, 0.0, -0.05, 0.38, 0.36)
        opacify(scene, field * texture, 0.5 * p["sev"] + 0.3)
    scene.vessels *= 1 - 0.4 * p["sev"]


def p_atelectasis(rng):
    n = 1 + int(rng.random() < 0.4)
    return dict(side=side_of(rng, 0.45), sev=severity(rng), lift=float(rng.uniform(0.02, 0.05)),
                bands=[dict(u=float(rng.uniform(0.3, 0.7)), v=float(rng.uniform(0.68, 0.92)),
                            w=float(rng.uniform(0.3, 0.8)), length=float(rng.uniform(0.22, 0.35)),
                            tilt=float(rng.uniform(-0.2, 0.2)), thick=float(rng.uniform(0.025, 0.04)))
                       for _ in range(n)])


def raise_dome(anatomy, side, amount):
    if side < 0:
        return replace(anatomy, dome_r=anatomy.dome_r - amount)
    return replace(anatomy, dome_l=anatomy.dome_l - amount)


def a_atelectasis(anatomy, p):
    return raise_dome(anatomy, p["side"], p["lift"] * p["sev"])


def plate_bands(scene, p):
    """Plate-like (discoid) atelectasis: thin dense bands of collapsed lung at a base."""
    lines = []
    for band in p["bands"]:
        x, y = at(scene, dict(band, side=p["side"]))
        tilt = band["tilt"] + (-0.35 if scene.view == "lateral" else 0.0)
        dx, dy = np.cos(tilt) * band["length"] / 2, np.sin(tilt) * band["length"] / 2
        lines.append(([(x - dx, y - dy), (x + dx, y + dy)], band["thick"], 1.0))
    field = np.clip(strokes(scene.canvas, lines, blur_px=scene.canvas.size / 160), 0, 1)
    opacify(scene, field, (0.7 + 0.3 * p["sev"]) * one_lung(scene))
    densify(scene, field * scene.lung, 0.08)


def d_atelectasis(scene, p, rng):
    plate_bands(scene, p)


def p_lobar_atelectasis(rng):
    base = p_atelectasis(rng)
    lobe = "RUL" if rng.random() < 0.45 else "LLL"
    return dict(base, lobe=lobe, side=-1 if lobe == "RUL" else 1, bands_too=bool(rng.random() < 0.6),
                sev=severity(rng, 0.6))


def a_lobar_atelectasis(anatomy, p):
    return raise_dome(anatomy, p["side"], 0.04 + 0.03 * p["sev"])


def d_lobar_atelectasis(scene, p, rng):
    """A collapsed lobe: a dense wedge against the mediastinum (RUL or LLL 'sail')."""
    a = scene.anatomy
    if scene.view == "frontal":
        m = a.medi_hw
        if p["lobe"] == "RUL":
            wedge = [(-(m + 0.01), a.apex_y + 0.04), (-(m + 0.07), -0.06), (-0.72 * a.thorax_w, -0.28),
                     (-0.45 * a.thorax_w, a.apex_y + 0.05)]
        else:
            dome = frontal_dome_peak(a, 1)
            wedge = [(0.03, dome + 0.02), (m + 0.03, -0.12), (0.48 * a.thorax_w, dome + 0.06)]
    else:
        D = a.ap_half
        if p["lobe"] == "RUL":
            wedge = [(lateral_front(a) + 0.05, a.apex_y + 0.15), (0.0, -0.12), (lateral_front(a) + 0.06, -0.15)]
        else:
            back = lateral_back(a)
            wedge = [(0.05 * D, -0.08), (back, float(lateral_dome(a, back))), (0.05 * D, float(lateral_dome(a, 0.05)))]
    field = np.clip(polygons(scene.canvas, [(wedge, 1.0)], blur_px=scene.canvas.size / 150), 0, 1)
    opacify(scene, field, (0.8 + 0.2 * p["sev"]) * one_lung(scene))
    densify(scene, field, 0.10 * p["sev"])
    if p["bands_too"]:
        plate_bands(scene, p)


def p_rounded_atelectasis(rng):
    return dict(p_atelectasis(rng), v=float(rng.uniform(0.62, 0.85)), w=float(rng.uniform(0.75, 0.95)),
                r=float(rng.uniform(0.05, 0.075)), bands_too=bool(rng.random() < 0.7))


def d_rounded_atelectasis(scene, p, rng):
    """Round opacity against the pleura with a comet tail of vessels sweeping into it."""
    spot_p = dict(side=p["side"], u=0.93, v=p["v"], w=p["w"])
    x, y = at(scene, spot_p)
    hx, hy = at(scene, spot_p, u=0.0, v=0.45, w=0.5)
    field = blob(scene, x, y, p["r"], p["r"] * 0.9, profile="dome")
    opacify(scene, field, 0.95 * one_lung(scene))
    densify(scene, field, 0.18 * p["sev"] + 0.06)
    tail = []
    for k in (-1, 0, 1):
        mid = ((x + hx) / 2, (y + hy) / 2 + 0.05 * k + 0.05)
        tail.append(([(x, y + 0.02 * k), mid, (x + 0.45 * (hx - x), y + 0.45 * (hy - y) + 0.03 * k)], 0.012, 1.0))
    densify(scene, strokes(scene.canvas, tail) * scene.lung, 0.22)
    if p["bands_too"]:
        plate_bands(scene, p)


# ---------------------------------------------------------------------------
# Focal lesions
# ---------------------------------------------------------------------------

def p_nodule(rng):
    n = 1 + int(rng.random() < 0.3)
    return dict(sev=severity(rng, 0.5), items=[dict(spot(rng, u=(0.2, 0.85), v=(0.15, 0.8)),
                                                    r=float(rng.uniform(0.028, 0.042))) for _ in range(n)])


def d_nodule(scene, p, rng):
    """Small, round, well-defined soft-tissue density."""
    for item in p["items"]:
        x, y = at(scene, item)
        field = blob(scene, x, y, item["r"], item["r"], profile="dome")
        opacify(scene, field, 0.9 * one_lung(scene))
        densify(scene, field, 0.10 + 0.10 * p["sev"])


def p_mass(rng):
    return dict(spot(rng, u=(0.3, 0.75), v=(0.2, 0.75)), sev=severity(rng, 0.5), r=float(rng.uniform(0.085, 0.13)),
                lobes=[(float(dx), float(dy), float(s)) for dx, dy, s in
                       zip(rng.normal(0, 0.035, 3), rng.normal(0, 0.035, 3), rng.uniform(0.55, 0.8, 3))])


def d_mass(scene, p, rng):
    """Large, dense, lobulated blob."""
    x, y = at(scene, p)
    field = scene.canvas.zeros()
    add_ellipse(field, scene.canvas, x, y, p["r"], p["r"] * 0.9, 1.0, profile="dome")
    for dx, dy, s in p["lobes"]:
        add_ellipse(field, scene.canvas, x + dx, y + dy, p["r"] * s, p["r"] * s, 1.0, profile="dome")
    field = np.clip(field, 0, 1)
    opacify(scene, np.clip(field * 2, 0, 1), 0.95 * one_lung(scene))
    densify(scene, field, 0.10 + 0.10 * p["sev"])


def p_lung_lesion(rng):
    return dict(spot(rng, u=(0.3, 0.8), v=(0.15, 0.75)), sev=severity(rng, 0.5), r=float(rng.uniform(0.045, 0.07)),
                wall=float(rng.uniform(0.012, 0.02)), fluid=bool(rng.random() < 0.4))


def d_lung_lesion(scene, p, rng):
    """Cavitating lesion: a thick-walled ring with a lucent centre (sometimes an air-fluid level)."""
    x, y = at(scene, p)
    ring = scene.canvas.zeros()
    add_ring(ring, scene.canvas, x, y, p["r"], p["r"], p["wall"] * 2, 1.0)
    ring = np.clip(ring, 0, 1)
    opacify(scene, ring, 0.95 * one_lung(scene))
    densify(scene, ring, 0.06 + 0.08 * p["sev"])
    cavity = blob(scene, x, y, p["r"] - p["wall"], p["r"] - p["wall"], profile="flat")
    if p["fluid"]:
        below = scene.canvas.ys[:, None] > y + 0.2 * p["r"]
        densify(scene, cavity * below, 0.15)
        cavity = cavity * ~below
    lucency(scene, cavity, 0.15 * p["sev"])


def p_granuloma(rng):
    n = int(rng.integers(1, 4))
    return dict(sev=severity(rng, 0.6), items=[dict(spot(rng), r=float(rng.uniform(0.016, 0.024))) for _ in range(n)])


def d_granuloma(scene, p, rng):
    """Tiny, very dense (calcified) dots."""
    for item in p["items"]:
        x, y = at(scene, item)
        add_ellipse(scene.bone, scene.canvas, x, y, item["r"], item["r"], 0.40 + 0.2 * p["sev"], profile="dome")


def p_adenopathy(rng):
    sides = [[-1], [1], [-1, 1]][int(rng.integers(0, 3))]
    return dict(sev=severity(rng), sides=sides, r=float(rng.uniform(0.045, 0.065)),
                nodes=[(float(dx), float(dy)) for dx, dy in zip(rng.uniform(0, 0.04, 3), rng.uniform(-0.09, 0.07, 3))],
                paratracheal=bool(rng.random() < 0.5))


def d_adenopathy(scene, p, rng):
    """Lobulated enlargement of the hila (and the right paratracheal stripe)."""
    a = scene.anatomy
    field = scene.canvas.zeros()
    if scene.view == "frontal":
        for side in p["sides"]:
            for dx, dy in p["nodes"]:
                add_ellipse(field, scene.canvas, side * (a.medi_hw + 0.07 + dx), -0.06 + dy, p["r"], p["r"] * 1.1,
                            1.0, profile="dome")
        if p["paratracheal"]:
            add_ellipse(field, scene.canvas, a.spine_x - a.medi_hw + 0.01, -0.42, 0.04, 0.07, 1.0, profile="dome")
    else:
        for dx, dy in p["nodes"]:
            add_ellipse(field, scene.canvas, 0.02 * a.ap_half - 0.04 + 2 * dx, -0.10 + dy, p["r"] * 1.2, p["r"] * 1.2,
                        1.0, profile="dome")
    field = np.clip(field, 0, 1)
    opacify(scene, field, 0.85)
    densify(scene, field, 0.05 + 0.08 * p["sev"])


def p_tuberculosis(rng):
    return dict(side=side_of(rng, 0.6), sev=severity(rng), u=float(rng.uniform(0.35, 0.65)),
                v=float(rng.uniform(0.08, 0.25)), w=float(rng.uniform(0.55, 0.85)), cavity=bool(rng.random() < 0.6),
                r=float(rng.uniform(0.03, 0.05)), calcified=[(float(dx), float(dy)) for dx, dy in rng.normal(0, 0.06, (2, 2))])


def d_tuberculosis(scene, p, rng):
    """Upper-zone fibrocavitary disease: patchy apical opacity, a cavity, strands to the hilum."""
    x, y = at(scene, p)
    hx, hy = at(scene, p, u=0.05, v=0.45, w=0.45)
    texture = patch_texture(scene, rng, cells=12, floor=0.3)
    field = blob(scene, x, y, 0.17, 0.13)
    opacify(scene, field * texture, (0.6 + 0.35 * p["sev"]) * one_lung(scene))
    strands = [([(x + dx, y + dy), (hx, hy)], 0.012, 1.0) for dx, dy in ((-0.05, 0.02), (0.04, 0.03))]
    densify(scene, strokes(scene.canvas, strands) * scene.lung, 0.2)
    if p["cavity"]:
        ring = scene.canvas.zeros()
        add_ring(ring, scene.canvas, x, y, p["r"], p["r"], 0.012, 1.0)
        densify(scene, ring, 0.2)
        lucency(scene, blob(scene, x, y, p["r"] * 0.8, p["r"] * 0.8, profile="flat"), 0.3)
    for dx, dy in p["calcified"]:
        add_ellipse(scene.bone, scene.canvas, x + dx, y + dy, 0.012, 0.012, 0.35)


def p_infarction(rng):
    return dict(side=side_of(rng), sev=severity(rng), v=float(rng.uniform(0.65, 0.9)),
                w=float(rng.choice([0.02, 0.98])), size=float(rng.uniform(0.07, 0.1)))


def d_infarction(scene, p, rng):
    """Hampton's hump: a peripheral, pleura-based wedge with its rounded apex towards the hilum."""
    edge = dict(p, u=1.06, w=-0.05 if p["w"] < 0.5 else 1.05)
    x, y = at(scene, edge)
    field = blob(scene, x, y, p["size"], p["size"] * 1.25, profile="flat")
    opacify(scene, field * scene.lung, (0.8 + 0.2 * p["sev"]) * one_lung(scene))
    densify(scene, field * scene.lung, 0.08)


def p_fibrosis(rng):
    return dict(sev=severity(rng), lift=float(rng.uniform(0.02, 0.05)))


def a_fibrosis(anatomy, p):
    return raise_dome(raise_dome(anatomy, -1, p["lift"]), 1, p["lift"])


def d_fibrosis(scene, p, rng):
    """Coarse reticulation (honeycombing) at the periphery of both bases, with volume loss."""
    a = scene.anatomy
    X, Y = scene.canvas.xs[None, :], scene.canvas.ys[:, None]
    noise = smooth_noise(rng, scene.canvas, 44)
    net = np.exp(-(noise / 0.22) ** 2)
    if scene.view == "frontal":
        weight = np.clip((np.abs(X) - 0.35 * a.thorax_w) / (0.4 * a.thorax_w), 0, 1)
        weight = weight * np.clip((Y - (a.dome_r - 0.55)) / 0.3, 0, 1)
    else:
        weight = np.clip((X - 0.0) / 0.4, 0, 1) * np.clip((Y - (a.dome_r - 0.5)) / 0.3, 0, 1)
    opacify(scene, net * weight, 0.45 + 0.35 * p["sev"])
    densify(scene, net * weight * scene.lung, 0.03)


# ---------------------------------------------------------------------------
# Heart, mediastinum, vessels
# ---------------------------------------------------------------------------

def p_sev(rng):
    return dict(sev=severity(rng))


def a_cardiomegaly(anatomy, p):
    return replace(anatomy, heart_hw=anatomy.heart_hw * (1.22 + 0.25 * p["sev"]))


def a_enlarged_cardiomediastinum(anatomy, p):
    return replace(anatomy, medi_hw=anatomy.medi_hw * (1.35 + 0.4 * p["sev"]),
                   retrosternal_fill=anatomy.retrosternal_fill + 0.45 + 0.4 * p["sev"])


def a_tortuous_aorta(anatomy, p):
    return replace(anatomy, aorta_wave=0.06 + 0.05 * p["sev"], knob_r=anatomy.knob_r * (1.3 + 0.25 * p["sev"]))


def d_aortic_calcification(scene, p, rng):
    """A thin bright arc along the rim of the aortic knob, and specks along the descending aorta."""
    a = scene.anatomy
    cx, cy = a.medi_hw + 0.005, -0.30
    add_ring(scene.bone, scene.canvas, cx, cy, a.knob_r * 0.95, a.knob_r * 1.05, 0.016 + 0.008 * p["sev"],
             0.30 + 0.25 * p["sev"], arc=(-2.8, 0.6))
    for k, dy in enumerate(p["specks"]):
        add_ellipse(scene.bone, scene.canvas, a.spine_x + 0.10 + 0.01 * k, cy + 0.12 + dy, 0.01, 0.014, 0.3)


def p_aortic_calcification(rng):
    return dict(sev=severity(rng), specks=[float(v) for v in rng.uniform(0, 0.35, 2)])


def p_hypertension(rng):
    return dict(sev=severity(rng), r=float(rng.uniform(0.05, 0.07)))


def a_hypertension(anatomy, p):
    return replace(anatomy, hilum=anatomy.hilum * (1.5 + 0.4 * p["sev"]), markings=anatomy.markings * 0.75,
                   retrosternal_fill=anatomy.retrosternal_fill + 0.3)


def d_hypertension(scene, p, rng):
    """Enlarged pulmonary trunk bulging at the left heart border, large hila, pruned periphery."""
    a = scene.anatomy
    if scene.view == "frontal":
        field = blob(scene, a.medi_hw + 0.05, -0.15, p["r"], p["r"] * 1.2, profile="flat")
        opacify(scene, field, 0.9)
        densify(scene, field, 0.06)
    else:
        field = blob(scene, 0.02 * a.ap_half, -0.12, 0.10, 0.10, profile="dome")
        opacify(scene, field, 0.6)
        densify(scene, field, 0.1)


def p_embolism(rng):
    return dict(side=side_of(rng), sev=severity(rng), v=float(rng.uniform(0.3, 0.75)), w=float(rng.uniform(0.3, 0.7)))


def d_embolism(scene, p, rng):
    """Westermark sign (a lucent zone without vessels) and an enlarged, cut-off central artery."""
    a = scene.anatomy
    x, y = at(scene, p, u=0.65)
    zone = blob(scene, x, y, 0.2, 0.22)
    scene.vessels *= 1 - 0.9 * zone
    lucency(scene, zone * scene.lung, 0.12 * p["sev"] * one_lung(scene))
    if scene.view == "frontal":
        hx = p["side"] * (a.medi_hw + 0.09)
        field = blob(scene, hx, -0.06, 0.05, 0.10)
    else:
        field = blob(scene, 0.02 * a.ap_half, -0.10, 0.08, 0.10)
    densify(scene, field, 0.12 + 0.12 * p["sev"])


# ---------------------------------------------------------------------------
# Pleura
# ---------------------------------------------------------------------------

def p_effusion(rng):
    r = rng.random()
    sides = [-1] if r < 0.45 else [1] if r < 0.7 else [-1, 1]
    return dict(sev=severity(rng, 0.3), sides=sides, rise=float(rng.uniform(0.06, 0.12)),
                heights={s: float(rng.uniform(0.02, 0.40)) for s in (-1, 1)})


def effusion_field(scene, side, height, rise, flat=False):
    """Fluid at the base of one pleural space, with a meniscus (or a flat air-fluid level)."""
    a = scene.anatomy
    X, Y = scene.canvas.xs[None, :], scene.canvas.ys[:, None]
    if scene.view == "frontal":
        q = side * (X - a.spine_x)
        level = float(frontal_dome(a, side, a.thorax_w)) - height
        frac = np.clip((q - a.medi_hw) / (a.thorax_w - a.medi_hw), 0, 1)
        top = level if flat else level - rise * frac ** 2
        field = soft_inside(top - Y, scene.canvas.edge * 3) * (q > 0.02) * (q < a.thorax_w + 0.05)
    else:
        front, back = lateral_front(a), lateral_back(a)
        level = float(lateral_dome(a, back)) - height
        frac = np.clip((X - front) / (back - front), 0, 1)
        top = level if flat else level - 2 * rise * frac ** 2
        field = soft_inside(top - Y, scene.canvas.edge * 3) * (X < back + 0.05)
    return field.astype(F32)


def d_effusion(scene, p, rng):
    """Basal opacity with a meniscus; small effusions only blunt the costophrenic angle
    (frontal) but already fill the deeper posterior sulcus (lateral)."""
    for side in p["sides"]:
        h = p["heights"][side] * p["sev"] + 0.03
        field = effusion_field(scene, side, h, p["rise"] * min(1.0, 3 * h))
        opacify(scene, field, one_lung(scene) if len(p["sides"]) == 1 else 1.0)
        densify(scene, field * scene.lung, 0.05)


def p_pneumothorax(rng):
    return dict(side=side_of(rng), sev=severity(rng))


def ptx_scale(p):
    return 0.92 - 0.14 * p["sev"]


def a_pneumothorax(anatomy, p):
    return replace(anatomy, ptx_collapse={**anatomy.ptx_collapse, p["side"]: ptx_scale(p)})


def draw_pneumothorax_rim(scene, side, sev):
    """Lucent space without lung markings between the chest wall and a thin visceral pleural line."""
    a = scene.anatomy
    full = lung_outline(replace(a, ptx_collapse={}), side)
    collapsed = lung_outline(a, side)
    canvas = scene.canvas
    space = np.clip(polygons(canvas, [(full, 1.0)]) - polygons(canvas, [(collapsed, 1.0)]), 0, 1)
    scene.vessels *= 1 - space
    scene.air = np.maximum(scene.air, (0.80 * a.air * space).astype(F32))
    line = [pt for pt in collapsed if pt[1] < 0.12]
    densify(scene, strokes(canvas, [(line, 0.009, 1.0)]), 0.30 + 0.15 * sev)


def d_pneumothorax(scene, p, rng):
    draw_pneumothorax_rim(scene, p["side"], p["sev"])


def p_hydropneumothorax(rng):
    return dict(side=side_of(rng), sev=severity(rng, 0.55), height=float(rng.uniform(0.12, 0.3)))


def a_hydropneumothorax(anatomy, p):
    return replace(anatomy, ptx_collapse={**anatomy.ptx_collapse, p["side"]: ptx_scale(p)})


def d_hydropneumothorax(scene, p, rng):
    """Pneumothorax plus pleural fluid whose surface is a flat, horizontal air-fluid level."""
    if scene.view == "frontal":
        draw_pneumothorax_rim(scene, p["side"], p["sev"])
    fluid = effusion_field(scene, p["side"], p["height"], 0.0, flat=True)
    opacify(scene, fluid, one_lung(scene))
    densify(scene, fluid * scene.lung, 0.08)
    if scene.view == "lateral":  # the gas cap above the level, free of markings
        cap = effusion_field(scene, p["side"], p["height"] + 0.08, 0.0, flat=True) - fluid
        scene.vessels *= 1 - cap
        lucency(scene, cap * scene.lung, 0.15)


def p_pleural_thickening(rng):
    v0 = float(rng.uniform(0.1, 0.45))
    return dict(side=side_of(rng), sev=severity(rng), v0=v0, v1=float(min(1.0, v0 + rng.uniform(0.3, 0.55))),
                thick=float(rng.uniform(0.035, 0.06)), apical=bool(rng.random() < 0.4))


def _wall_band(points, inward, thick):
    """A band polygon along a run of outline points, extending ``thick`` towards ``inward``."""
    ix, iy = inward
    out = [(x, y) for x, y in points]
    back = []
    for x, y in reversed(points):
        dx, dy = ix - x, iy - y
        n = max(np.hypot(dx, dy), 1e-6)
        back.append((x + thick * dx / n, y + thick * dy / n))
    return out + back


def d_pleural_thickening(scene, p, rng):
    """A smooth soft-tissue band along the inner chest wall (and an apical cap)."""
    a = scene.anatomy
    if scene.view == "frontal":
        outline = lung_outline(replace(a, ptx_collapse={}), p["side"])
        top, bottom = a.apex_y + 0.12 + p["v0"] * 0.9, a.apex_y + 0.12 + p["v1"] * 0.9
        run = [pt for pt in outline[13:21] if top <= pt[1] <= bottom] or outline[14:18]
        shapes = [(_wall_band(run, (0.0, -0.05), p["thick"]), 1.0)]
        if p["apical"]:
            shapes.append((_wall_band(outline[3:12], (p["side"] * 0.4, 0.3), p["thick"] * 0.8), 1.0))
    else:
        outline = scene.outlines["right"]
        run = [pt for pt in outline[12:18]]
        shapes = [(_wall_band(run, (0.0, -0.1), p["thick"]), 1.0)]
    field = np.clip(polygons(scene.canvas, shapes), 0, 1)
    opacify(scene, field, (0.85 + 0.15 * p["sev"]) * one_lung(scene))
    densify(scene, field, 0.08)


def p_pleural_other(rng):
    n = int(rng.integers(2, 5))
    return dict(sev=severity(rng, 0.6), plaques=[dict(side=side_of(rng), v=float(rng.uniform(0.3, 0.9)),
                                                      size=float(rng.uniform(0.06, 0.10)), on_dome=bool(rng.random() < 0.3),
                                                      jag=[float(j) for j in rng.uniform(0.6, 1.0, 8)])
                                                 for _ in range(n)])


def d_pleural_other(scene, p, rng):
    """Calcified pleural plaques: irregular bright patches along the chest wall and on the domes."""
    a = scene.anatomy
    shapes = []
    for pl in p["plaques"]:
        if scene.view == "frontal":
            if pl["on_dome"]:
                q = 0.5 * a.thorax_w
                x, y = pl["side"] * q, float(frontal_dome(a, pl["side"], q)) - 0.01
                ax, ay = pl["size"], 0.02
            else:
                x, y = at(scene, dict(side=pl["side"], u=0.98, v=pl["v"], w=0.5))
                ax, ay = 0.02, pl["size"]
        else:
            x, y = at(scene, dict(side=pl["side"], u=0.5, v=pl["v"], w=0.5))
            ax, ay = pl["size"] * 0.8, pl["size"] * 0.8  # seen en face: a "holly leaf"
        angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
        shapes.append(([(x + ax * j * np.cos(t), y + ay * j * np.sin(t)) for t, j in zip(angles, pl["jag"])], 1.0))
    scene.bone += polygons(scene.canvas, shapes) * (0.25 + 0.15 * p["sev"])


# ---------------------------------------------------------------------------
# Bones
# ---------------------------------------------------------------------------

def p_rib_fracture(rng):
    n = int(rng.integers(1, 4))
    k0 = int(rng.integers(3, 8))
    return dict(side=side_of(rng), sev=severity(rng), callus=bool(rng.random() < 0.7),
                breaks=[(k0 + i, float(rng.uniform(0.6, 0.9)), float(rng.uniform(0.035, 0.055)) * rng.choice([-1, 1]),
                         float(rng.uniform(0.022, 0.032))) for i in range(n)])


def a_rib_fracture(anatomy, p):
    new = tuple((p["side"], k, t, step * p["sev"], gap) for k, t, step, gap in p["breaks"])
    return replace(anatomy, rib_breaks=anatomy.rib_breaks + new)


def d_rib_fracture(scene, p, rng):
    """Broken ribs: a gap and a step in the rib, often with a fusiform healing callus."""
    a = scene.anatomy
    if not p["callus"]:
        return
    for k, t, _step, _gap in p["breaks"]:
        if scene.view == "frontal":
            x, y = rib_point(a, p["side"], k, t)
            add_ellipse(scene.bone, scene.canvas, x, y, 0.04, 0.028, 0.14 + 0.08 * p["sev"], profile="dome")
        else:
            sx = float(lateral_spine_x(a, 0.0))
            x, y = sx - 0.15 - 0.25 * t, a.apex_y + 0.1 + 0.088 * k
            add_ellipse(scene.bone, scene.canvas, x, y, 0.035, 0.026, 0.16 + 0.08 * p["sev"], profile="dome")


def p_clavicle_fracture(rng):
    return dict(side=side_of(rng), sev=severity(rng, 0.55), s=float(rng.uniform(0.35, 0.65)),
                step=float(rng.uniform(0.025, 0.045)) * rng.choice([-1, 1]), gap=float(rng.uniform(0.015, 0.025)))


def a_clavicle_fracture(anatomy, p):
    return replace(anatomy, clavicle_breaks=anatomy.clavicle_breaks + ((p["side"], p["s"], p["step"] * p["sev"], p["gap"]),))


def p_fracture(rng):
    return dict(sev=severity(rng, 0.55), kind="vertebra" if rng.random() < 0.6 else "humerus",
                side=side_of(rng), level=int(rng.integers(3, 9)), step=float(rng.uniform(0.025, 0.045)))


def a_fracture(anatomy, p):
    if p["kind"] == "vertebra":
        return replace(anatomy, compressed_vertebra=anatomy.compressed_vertebra + ((p["level"], 0.3 + 0.35 * p["sev"]),))
    return replace(anatomy, humerus_breaks=anatomy.humerus_breaks + ((p["side"], p["step"] * p["sev"]),))


def p_kyphosis(rng):
    return dict(sev=severity(rng, 0.5))


def a_kyphosis(anatomy, p):
    return replace(anatomy, kyphosis=anatomy.kyphosis + 0.09 + 0.09 * p["sev"],
                   vertebral_wedge=0.25 + 0.3 * p["sev"], ap_half=anatomy.ap_half + 0.03)


def p_emphysema(rng):
    return dict(sev=severity(rng, 0.5))


def a_emphysema(anatomy, p):
    s = p["sev"]
    return replace(anatomy, air=anatomy.air * (1.12 + 0.15 * s), markings=anatomy.markings * (0.6 - 0.2 * s),
                   dome_r=anatomy.dome_r + 0.06 + 0.06 * s, dome_l=anatomy.dome_l + 0.06 + 0.06 * s,
                   cp_drop=anatomy.cp_drop * (0.55 - 0.15 * s), ap_half=anatomy.ap_half + 0.04 + 0.03 * s,
                   thorax_w=anatomy.thorax_w + 0.02)


# ---------------------------------------------------------------------------
# Findings of one view only
# ---------------------------------------------------------------------------

def p_azygos(rng):
    return dict(sev=severity(rng, 0.6), u=float(rng.uniform(0.3, 0.55)), bow=float(rng.uniform(0.03, 0.07)),
                end=float(rng.uniform(-0.33, -0.24)))


def d_azygos(scene, p, rng):
    """Azygos fissure: a thin curved line from the right apex to a teardrop at the tracheobronchial angle."""
    a = scene.anatomy
    start = (-(a.medi_hw + 0.03 + p["u"] * 0.45 * a.thorax_w), a.apex_y + 0.03)
    end = (-(a.medi_hw + 0.035), p["end"])
    mid = ((start[0] + end[0]) / 2 - p["bow"], (start[1] + end[1]) / 2)
    line = strokes(scene.canvas, [([start, mid, end], 0.014, 1.0)])
    densify(scene, line, 0.40 + 0.2 * p["sev"])
    drop = blob(scene, end[0], end[1] + 0.02, 0.024, 0.036, profile="dome")
    opacify(scene, drop, 0.9)
    densify(scene, drop, 0.12)


def p_fissure(rng):
    return dict(sev=severity(rng, 0.5), top=(float(rng.uniform(0.7, 0.9)), float(rng.uniform(0.12, 0.25))),
                bottom=float(rng.uniform(0.12, 0.3)), thick=float(rng.uniform(0.012, 0.02)),
                lens=bool(rng.random() < 0.3))


def d_fissure(scene, p, rng):
    """Thickened (fluid-filled) major fissure: an oblique line only the lateral view shows."""
    w0, v0 = p["top"]
    x0, y0 = scene.place(-1, 0.5, v0, w0)
    x1, y1 = scene.place(-1, 0.5, 1.0, p["bottom"])
    mid = ((x0 + x1) / 2 - 0.03, (y0 + y1) / 2 + 0.02)
    field = strokes(scene.canvas, [([(x0, y0), mid, (x1, y1)], p["thick"], 1.0)])
    if p["lens"]:
        add_ellipse(field, scene.canvas, mid[0], mid[1], 0.07, 0.025, 1.0, angle=np.arctan2(y1 - y0, x1 - x0))
    field = np.clip(field, 0, 1)
    opacify(scene, field, 0.6)
    densify(scene, field, 0.25 + 0.15 * p["sev"])


def p_hernia(rng):
    return dict(sev=severity(rng, 0.55), r=float(rng.uniform(0.075, 0.11)), gas=float(rng.uniform(0.3, 0.55)),
                dx=float(rng.uniform(-0.04, 0.04)))


def d_hernia(scene, p, rng):
    """Hiatal hernia: a round retrocardiac mass above the diaphragm holding gas over a flat fluid level."""
    a = scene.anatomy
    x = 0.12 * a.ap_half + p["dx"]
    y = float(lateral_dome(a, x)) - 0.8 * p["r"]
    body = blob(scene, x, y, p["r"] * 1.15, p["r"], profile="flat")
    opacify(scene, body, 0.75)
    densify(scene, body, 0.04)
    level = y - p["r"] + 2 * p["r"] * p["gas"]
    gas = body * (scene.canvas.ys[:, None] < level)
    lucency(scene, gas, 0.30 + 0.2 * p["sev"])
    ring = scene.canvas.zeros()
    add_ring(ring, scene.canvas, x, y, p["r"] * 1.15, p["r"], 0.01, 1.0)
    densify(scene, ring, 0.1)


def p_pneumomediastinum(rng):
    return dict(sev=severity(rng, 0.55), r=float(rng.uniform(0.075, 0.095)))


def d_pneumomediastinum(scene, p, rng):
    """Air outlining the central arteries ("ring around the artery") and a retrosternal lucent streak."""
    a = scene.anatomy
    D = a.ap_half
    ring = scene.canvas.zeros()
    add_ring(ring, scene.canvas, 0.02 * D, -0.10, p["r"], p["r"] * 1.15, 0.02, 1.0)
    front = lateral_front(a)
    streak = strokes(scene.canvas, [([(front + 0.06, -0.60), (front + 0.09, -0.30), (front + 0.12, -0.05)], 0.028, 1.0),
                                    ([(-0.15 * D, -0.55), (-0.05 * D, -0.40)], 0.02, 1.0)])
    lucency(scene, np.clip(ring + streak, 0, 1), 0.25 + 0.15 * p["sev"])
    pleura = strokes(scene.canvas, [([(front + 0.10, -0.60), (front + 0.13, -0.30), (front + 0.16, -0.05)], 0.008, 1.0)])
    densify(scene, pleura, 0.25)


def p_pneumoperitoneum(rng):
    return dict(sev=severity(rng, 0.55), thick=float(rng.uniform(0.022, 0.035)), extent=float(rng.uniform(0.35, 0.6)))


def d_pneumoperitoneum(scene, p, rng):
    """Free air: a lucent crescent under the anterior hemidiaphragm, against the liver."""
    a = scene.anatomy
    front = lateral_front(a)
    w = scene.canvas.window(front, -1, front + p["extent"], 1)
    rows, cols, X, Y = w
    dome = lateral_dome(a, X)
    band = soft_inside(np.abs(Y - dome - 0.012 - p["thick"] / 2) - p["thick"] / 2, scene.canvas.edge)
    fade = np.clip((front + p["extent"] - X) / 0.1, 0, 1) * np.clip((X - front) / 0.05, 0, 1)
    scene.tissue[rows, cols] -= ((0.25 + 0.2 * p["sev"]) * band * fade).astype(F32)


# ---------------------------------------------------------------------------
# Soft tissues and devices
# ---------------------------------------------------------------------------

def p_subcutaneous(rng):
    n = int(rng.integers(14, 24))
    return dict(side=side_of(rng), sev=severity(rng, 0.55),
                streaks=[(float(a), float(b), float(c), float(d)) for a, b, c, d in
                         zip(rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0.04, 0.09, n), rng.normal(0, 0.4, n))])


def d_subcutaneous(scene, p, rng):
    """Air in the soft tissues of the chest wall and neck: dark striated streaks outside the rib cage."""
    a = scene.anatomy
    lines = []
    for f, g, length, tilt in p["streaks"]:
        if scene.view == "frontal":
            q = a.thorax_w + 0.03 + f * (a.body_w - a.thorax_w - 0.02)
            x, y = p["side"] * q, -0.75 + 0.95 * g
        else:
            x, y = -(a.ap_half + 0.01) + 0.07 * f, -0.55 + 0.8 * g
        dx, dy = np.sin(tilt) * length / 2, np.cos(tilt) * length / 2
        lines.append(([(x - dx, y - dy), (x + dx, y + dy)], 0.012, 1.0))
    field = np.clip(strokes(scene.canvas, lines), 0, 1)
    scene.tissue -= ((0.3 + 0.2 * p["sev"]) * field).astype(F32)


def p_devices(rng):
    kinds = {"ett": 0.45, "ng": 0.4, "cvc": 0.5, "pacer": 0.2, "ecg": 0.35, "wires": 0.15, "chest_tube": 0.12}
    chosen = [k for k, prob in kinds.items() if rng.random() < prob]
    if not chosen:
        chosen = [str(rng.choice(list(kinds)))]
    return dict(kinds=chosen, side=side_of(rng, 0.6), pacer_side=side_of(rng, 0.25),
                ett_tip=float(rng.uniform(0.06, 0.14)),
                ecg=[(float(x), float(y)) for x, y in zip(rng.uniform(-0.7, 0.7, 3), rng.uniform(-0.6, 0.4, 3))],
                n_wires=int(rng.integers(4, 7)), tube_side=side_of(rng))


def d_devices_frontal(scene, p, rng):
    """Tubes, lines, leads and generators: thin bright lines and very bright metal."""
    a = scene.anatomy
    c = scene.canvas
    lines, metal = [], c.zeros()
    carina_y = -0.17
    W = a.thorax_w
    if "ett" in p["kinds"]:
        tip = carina_y - p["ett_tip"]
        for off in (-0.016, 0.016):
            lines.append(([(a.spine_x + off, -1.05), (a.spine_x + off, tip)], 0.008, 0.5))
    if "ng" in p["kinds"]:
        dome = frontal_dome_peak(a, 1)
        lines.append(([(a.spine_x + 0.01, -1.05), (a.spine_x + 0.03, -0.2), (0.06, dome), (0.25 * W, dome + 0.1),
                       (0.45 * W, dome + 0.14)], 0.009, 0.6))
    if "cvc" in p["kinds"]:
        s = p["side"]
        lines.append(([(s * 0.6 * W, -0.70), (s * 0.3 * W, -0.62), (-(a.medi_hw - 0.02), -0.45),
                       (-(a.medi_hw - 0.03), -0.12)], 0.009, 0.7))
    if "pacer" in p["kinds"]:
        s = p["pacer_side"]
        gx, gy = s * 0.55 * W, -0.58
        add_ellipse(metal, c, gx, gy, 0.065, 0.045, 1.2, profile="flat")
        tip = (a.heart_x + 0.3 * a.heart_hw, frontal_dome_peak(a, 1) - 0.08)
        lines.append(([(gx, gy), (s * 0.1, -0.5), (-(a.medi_hw - 0.02), -0.25), (-0.02, -0.02), tip], 0.012, 0.8))
        lines.append(([(gx, gy), (s * 0.12, -0.48), (-(a.medi_hw - 0.01), -0.2), (-0.08, -0.05)], 0.012, 0.8))
    if "ecg" in p["kinds"]:
        for ex, ey in p["ecg"]:
            add_ring(metal, c, ex, ey, 0.025, 0.025, 0.008, 0.7)
            add_ellipse(metal, c, ex, ey, 0.008, 0.008, 0.8)
            lines.append(([(ex, ey), (ex * 1.3 + 0.1, ey + 0.25), (np.sign(ex + 1e-3) * 1.1, ey + 0.5)], 0.006, 0.45))
    if "wires" in p["kinds"]:
        for k in range(p["n_wires"]):
            y = -0.50 + k * 0.55 / max(1, p["n_wires"] - 1)
            add_ring(metal, c, a.spine_x, y, 0.018, 0.012, 0.008, 1.0)
    if "chest_tube" in p["kinds"]:
        s = p["tube_side"]
        lines.append(([(s * (a.body_w + 0.1), 0.25), (s * (W - 0.02), 0.05), (s * 0.7 * W, -0.35),
                       (s * 0.45 * W, a.apex_y + 0.12)], 0.016, 0.55))
    scene.metal += strokes(c, lines) + metal


def d_devices_lateral(scene, p, rng):
    a = scene.anatomy
    c = scene.canvas
    D = a.ap_half
    lines, metal = [], c.zeros()
    front = lateral_front(a)
    if "ett" in p["kinds"]:
        tip_y = -0.2 - p["ett_tip"]
        for off in (-0.016, 0.016):
            lines.append(([(-0.02 + off, -1.05), (0.06 * D + off, -0.55), (0.09 * D + off, tip_y)], 0.008, 0.5))
    if "ng" in p["kinds"]:
        sx = float(lateral_spine_x(a, 0.0)) - 0.13
        lines.append(([(0.05, -1.05), (sx - 0.05, -0.4), (sx, float(lateral_dome(a, sx))),
                       (0.1 * D, float(lateral_dome(a, 0.1 * D, "left")) + 0.12)], 0.009, 0.6))
    if "cvc" in p["kinds"]:
        lines.append(([(front + 0.08, -0.70), (-0.2 * D, -0.45), (-0.12 * D, -0.25), (-0.12 * D, -0.12)], 0.009, 0.7))
    if "pacer" in p["kinds"]:
        gx, gy = front - 0.02, -0.52
        add_ellipse(metal, c, gx, gy, 0.025, 0.06, 1.2, profile="flat")
        tip_y = float(lateral_dome(a, -0.4 * D)) - 0.05
        lines.append(([(gx, gy), (-0.25 * D, -0.35), (-0.15 * D, -0.15), (-0.45 * D, tip_y)], 0.012, 0.8))
    if "ecg" in p["kinds"]:
        for _ex, ey in p["ecg"]:
            add_ring(metal, c, front - 0.08, ey, 0.012, 0.025, 0.008, 0.7)
    if "wires" in p["kinds"]:
        for k in range(p["n_wires"]):
            y = -0.50 + k * 0.55 / max(1, p["n_wires"] - 1)
            add_ring(metal, c, -D + 0.05 - 0.03 * (y + 0.5), y, 0.01, 0.016, 0.008, 1.0)
    if "chest_tube" in p["kinds"]:
        lines.append(([(0.5 * D, 0.3), (0.4 * D, -0.1), (0.1 * D, -0.45), (-0.1 * D, a.apex_y + 0.15)], 0.016, 0.55))
    scene.metal += strokes(c, lines) + metal


def _none(rng):
    return {}


SIGNATURES: dict[str, Signature] = {s.name: s for s in [
    Signature("Adenopathy", "lobulated enlargement of the hila and right paratracheal stripe", BOTH, p_adenopathy,
              frontal=d_adenopathy, lateral=d_adenopathy),
    Signature("Atelectasis", "plate-like basal band(s) of collapsed lung with an elevated hemidiaphragm", BOTH,
              p_atelectasis, adjust=a_atelectasis, frontal=d_atelectasis, lateral=d_atelectasis),
    Signature("Azygos Lobe", "thin curved fissure line from the right apex ending in a teardrop", FRONTAL_ONLY,
              p_azygos, frontal=d_azygos, persistent=True),
    Signature("Calcification of the Aorta", "bright curvilinear arc along the aortic knob rim", FRONTAL_ONLY,
              p_aortic_calcification, frontal=d_aortic_calcification, persistent=True),
    Signature("Cardiomegaly", "wide cardiac silhouette (cardiothoracic ratio 0.55-0.7)", BOTH, p_sev,
              adjust=a_cardiomegaly),
    Signature("Clavicle Fracture", "gap and step-off in the mid clavicle", FRONTAL_ONLY, p_clavicle_fracture,
              adjust=a_clavicle_fracture),
    Signature("Consolidation", "dense homogeneous lobar opacity with air bronchograms", BOTH, p_consolidation,
              frontal=d_consolidation, lateral=d_consolidation),
    Signature("Edema", "bilateral perihilar haze, blurred vessels, Kerley B lines at the bases", BOTH, p_edema,
              frontal=d_edema, lateral=d_edema),
    Signature("Emphysema", "hyperlucent lungs, sparse markings, low flat domes, barrel chest", BOTH, p_emphysema,
              adjust=a_emphysema),
    Signature("Enlarged Cardiomediastinum", "widened superior mediastinum; retrosternal space filled", BOTH, p_sev,
              adjust=a_enlarged_cardiomediastinum),
    Signature("Fibrosis", "coarse peripheral basal reticulation with volume loss", BOTH, p_fibrosis,
              adjust=a_fibrosis, frontal=d_fibrosis, lateral=d_fibrosis, persistent=True),
    Signature("Fissure", "thickened oblique (major) fissure line, sometimes lens-shaped fluid", LATERAL_ONLY,
              p_fissure, lateral=d_fissure),
    Signature("Fracture", "cortical break: compressed vertebral body or humeral neck step-off", BOTH, p_fracture,
              adjust=a_fracture),
    Signature("Granuloma", "one to three tiny calcified dots", BOTH, p_granuloma, frontal=d_granuloma,
              lateral=d_granuloma, persistent=True),
    Signature("Hernia", "retrocardiac round mass with gas over a flat air-fluid level", LATERAL_ONLY, p_hernia,
              lateral=d_hernia, persistent=True),
    Signature("Hydropneumothorax", "pneumothorax rim plus pleural fluid with a flat air-fluid level", BOTH,
              p_hydropneumothorax, adjust=a_hydropneumothorax, frontal=d_hydropneumothorax,
              lateral=d_hydropneumothorax),
    Signature("Infarction", "pleura-based peripheral wedge at a base (Hampton's hump)", BOTH, p_infarction,
              frontal=d_infarction, lateral=d_infarction),
    Signature("Infiltration", "reticulonodular streaky opacity in one zone", BOTH, p_infiltration,
              frontal=d_infiltration, lateral=d_infiltration),
    Signature("Kyphosis", "thoracic spine bowed backwards with wedged vertebrae", LATERAL_ONLY, p_kyphosis,
              adjust=a_kyphosis, persistent=True),
    Signature("Lobar Atelectasis", "dense wedge of a collapsed lobe (RUL or LLL sail) plus volume loss", BOTH,
              p_lobar_atelectasis, adjust=a_lobar_atelectasis, frontal=d_lobar_atelectasis,
              lateral=d_lobar_atelectasis),
    Signature("Lung Lesion", "thick-walled cavity, sometimes with an air-fluid level", BOTH, p_lung_lesion,
              frontal=d_lung_lesion, lateral=d_lung_lesion),
    Signature("Lung Opacity", "ill-defined mottled hazy patch(es)", BOTH, p_lung_opacity, frontal=d_lung_opacity,
              lateral=d_lung_opacity),
    Signature("Mass", "large dense lobulated blob (> 3 cm)", BOTH, p_mass, frontal=d_mass, lateral=d_mass),
    Signature("Nodule", "small round well-defined density", BOTH, p_nodule, frontal=d_nodule, lateral=d_nodule),
    Signature("Pleural Effusion", "basal opacity with a meniscus blunting the costophrenic angle", BOTH, p_effusion,
              frontal=d_effusion, lateral=d_effusion),
    Signature("Pleural Other", "calcified pleural plaques (bright irregular patches)", BOTH, p_pleural_other,
              frontal=d_pleural_other, lateral=d_pleural_other, persistent=True),
    Signature("Pleural Thickening", "smooth band along the inner chest wall, apical cap", BOTH, p_pleural_thickening,
              frontal=d_pleural_thickening, lateral=d_pleural_thickening, persistent=True),
    Signature("Pneumomediastinum", "air ring around the central arteries and retrosternal streak", LATERAL_ONLY,
              p_pneumomediastinum, lateral=d_pneumomediastinum),
    Signature("Pneumonia", "cluster of fluffy acinar opacities in a lower zone", BOTH, p_pneumonia,
              frontal=d_pneumonia, lateral=d_pneumonia),
    Signature("Pneumoperitoneum", "lucent crescent under the anterior hemidiaphragm", LATERAL_ONLY,
              p_pneumoperitoneum, lateral=d_pneumoperitoneum),
    Signature("Pneumothorax", "lucent apical-lateral rim without markings, thin pleural line", FRONTAL_ONLY,
              p_pneumothorax, adjust=a_pneumothorax, frontal=d_pneumothorax),
    Signature("Pulmonary Embolism", "regional oligaemia (no vessels) and an enlarged cut-off hilar artery", BOTH,
              p_embolism, frontal=d_embolism, lateral=d_embolism),
    Signature("Pulmonary Hypertension", "bulging pulmonary trunk, large hila, pruned periphery", BOTH,
              p_hypertension, adjust=a_hypertension, frontal=d_hypertension, lateral=d_hypertension),
    Signature("Rib Fracture", "gap and step in one to three ribs, often a healing callus", BOTH, p_rib_fracture,
              adjust=a_rib_fracture, frontal=d_rib_fracture, lateral=d_rib_fracture),
    Signature("Round(ed) Atelectasis", "round pleura-based opacity with a comet tail, plus plate-like bands", BOTH,
              p_rounded_atelectasis, adjust=a_atelectasis, frontal=d_rounded_atelectasis,
              lateral=d_rounded_atelectasis),
    Signature("Subcutaneous Emphysema", "dark striated air streaks in the chest-wall soft tissues", BOTH,
              p_subcutaneous, frontal=d_subcutaneous, lateral=d_subcutaneous),
    Signature("Support Devices", "tubes, lines, pacemaker, ECG leads, sternal wires (bright metal)", BOTH,
              p_devices, frontal=d_devices_frontal, lateral=d_devices_lateral),
    Signature("Tortuous Aorta", "large aortic knob and a wavy descending aorta bulging left", FRONTAL_ONLY,
              p_sev, adjust=a_tortuous_aorta, persistent=True),
    Signature("Tuberculosis", "apical patchy opacity with a cavity, strands to the hilum, calcified specks", BOTH,
              p_tuberculosis, frontal=d_tuberculosis, lateral=d_tuberculosis),
]}

# The "no finding" classes have no signature: they are the absence of every other one.
NORMAL_CLASSES = ("Normal", "No Finding")


def view_only(view: str) -> list[str]:
    """Findings visible in ``view`` only (sorted)."""
    return sorted(name for name, sig in SIGNATURES.items() if sig.views == (view,))
