"""Signatures of the lung parenchyma: airspace and interstitial opacities, collapse,
focal lesions, hyperinflation, vessels, and the two fissure findings."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .anatomy import frontal_dome, frontal_dome_peak, lateral_back, lateral_dome, lateral_front
from .drawing import Ellipse, add_ellipse, add_ring, polygons, smooth_noise, soft_inside, strokes
from .signs import at, blob, densify, lucency, one_lung, opacify, patch_texture, raise_dome, severity, side_of, spot

RETROCARDIAC = 0.25  # share of lower-lobe opacities hidden behind the heart on the frontal view


def retrocardiac_spot(rng):
    """Left lower lobe behind the heart: masked by the cardiac shadow on the frontal view, clear on the
    lateral one (the classic missed retrocardiac pneumonia)."""
    return dict(side=1, u=float(rng.uniform(0.02, 0.2)), v=float(rng.uniform(0.75, 0.92)),
                w=float(rng.uniform(0.7, 0.88)))


def p_lung_opacity(rng):
    n = 1 + int(rng.random() < 0.35)
    patches = []
    for _ in range(n):
        where = retrocardiac_spot(rng) if rng.random() < RETROCARDIAC else spot(rng, u=(0.25, 0.8), v=(0.25, 0.85))
        patches.append(dict(where, a=float(rng.uniform(0.14, 0.24)), b=float(rng.uniform(0.12, 0.2))))
    return dict(sev=severity(rng), patches=patches)


def d_lung_opacity(scene, p, rng):
    texture = patch_texture(scene, rng, cells=7, floor=0.5)
    for patch in p["patches"]:
        x, y = at(scene, patch)
        field = blob(scene, x, y, patch["a"], patch["b"])
        opacify(scene, np.clip(1.3 * field * texture, 0, 1), (0.6 + 0.35 * p["sev"]) * one_lung(scene))


def p_consolidation(rng):
    return dict(spot(rng, u=(0.35, 0.65), v=(0.45, 0.8)), sev=severity(rng, 0.6),
                a=float(rng.uniform(0.16, 0.24)), b=float(rng.uniform(0.13, 0.19)),
                fissure=float(rng.uniform(-0.12, 0.12)),
                bronchi=[float(a) for a in rng.uniform(0.3, np.pi - 0.3, size=4)])


def d_consolidation(scene, p, rng):
    """Dense, homogeneous lobar opacity whose upper border is a straight fissure, with air bronchograms."""
    x, y = at(scene, p)
    top = y - 0.35 * p["b"]
    field = 1.8 * blob(scene, x, y + 0.3 * p["b"], p["a"], p["b"])
    X, Y = scene.canvas.xs[None, :], scene.canvas.ys[:, None]
    fissure = top + p["fissure"] * (X - x)  # the lobe ends sharply at its fissure
    field = field * soft_inside(fissure - Y, scene.canvas.edge)
    field = np.clip(field * patch_texture(scene, rng, cells=14, floor=0.7), 0, 1)
    opacify(scene, field, (0.85 + 0.15 * p["sev"]) * one_lung(scene))
    densify(scene, field * scene.lung, 0.05)
    lines = []
    for ang in p["bronchi"]:
        end = (x + 0.8 * p["a"] * np.cos(ang), y + 0.8 * p["b"] * np.sin(ang) + 0.2 * p["b"])
        lines.append(([(x, top + 0.02), ((x + end[0]) / 2, (top + end[1]) / 2), end], 0.012, 1.0))
    lucency(scene, strokes(scene.canvas, lines) * field, 0.25 * p["sev"])


def p_pneumonia(rng):
    hidden = rng.random() < RETROCARDIAC
    centre = retrocardiac_spot(rng) if hidden else spot(rng, u=(0.3, 0.75), v=(0.45, 0.9))
    n = int(rng.integers(8, 14))
    spread = 0.06 if hidden else 0.09
    return dict(centre, sev=severity(rng), both=bool(rng.random() < 0.25) and not hidden,
                blobs=[(float(dx), float(dy), float(r)) for dx, dy, r in
                       zip(rng.normal(0, spread, n), rng.normal(0, spread * 0.9, n), rng.uniform(0.04, 0.065, n))])


def d_pneumonia(scene, p, rng):
    """Multifocal fluffy (acinar) opacities clustered in one zone."""
    sides = (p["side"], -p["side"]) if p["both"] else (p["side"],)
    field = scene.canvas.zeros()
    for side in sides:
        x, y = at(scene, p, side=side)
        for dx, dy, r in p["blobs"]:
            add_ellipse(field, scene.canvas, Ellipse(x + dx, y + dy, r, r * 0.9), 1.0, profile="gauss")
    opacify(scene, np.clip(1.3 * field, 0, 1), (0.75 + 0.25 * p["sev"]) * one_lung(scene))


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
    return dict(sev=severity(rng), kerley=[(float(v), float(length)) for v, length in
                                           zip(rng.uniform(0.0, 1.0, 8), rng.uniform(0.04, 0.07, 8))])


def d_edema(scene, p, rng):
    """Bilateral perihilar haze ("bat wings") with Kerley B lines at the bases."""
    a = scene.anatomy
    texture = patch_texture(scene, rng, cells=8, floor=0.6)
    if scene.view == "frontal":
        field = scene.canvas.zeros()
        for side in (-1, 1):
            add_ellipse(field, scene.canvas, Ellipse(side * (a.medi_hw + 0.10), 0.0, 0.28, 0.32), 1.0, profile="gauss")
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
    return dict(side=side_of(rng, 0.45), sev=severity(rng), lift=float(rng.uniform(0.04, 0.08)),
                bands=[dict(u=float(rng.uniform(0.3, 0.7)), v=float(rng.uniform(0.68, 0.92)),
                            w=float(rng.uniform(0.3, 0.8)), length=float(rng.uniform(0.28, 0.42)),
                            tilt=float(rng.uniform(-0.2, 0.2)), thick=float(rng.uniform(0.04, 0.06)))
                       for _ in range(n)])


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


def p_nodule(rng):
    n = 1 + int(rng.random() < 0.3)
    return dict(sev=severity(rng, 0.5), items=[dict(spot(rng, u=(0.2, 0.85), v=(0.15, 0.8)),
                                                    r=float(rng.uniform(0.035, 0.05))) for _ in range(n)])


def d_nodule(scene, p, rng):
    """Small, round, well-defined soft-tissue density."""
    for item in p["items"]:
        x, y = at(scene, item)
        field = blob(scene, x, y, item["r"], item["r"], profile="dome")
        opacify(scene, np.clip(1.5 * field, 0, 1), one_lung(scene))
        densify(scene, field, 0.15 + 0.10 * p["sev"])


def p_mass(rng):
    return dict(spot(rng, u=(0.3, 0.75), v=(0.2, 0.75)), sev=severity(rng, 0.5), r=float(rng.uniform(0.11, 0.16)),
                lobes=[(float(dx), float(dy), float(s)) for dx, dy, s in
                       zip(rng.normal(0, 0.035, 3), rng.normal(0, 0.035, 3), rng.uniform(0.55, 0.8, 3))])


def d_mass(scene, p, rng):
    """Large, dense, lobulated blob."""
    x, y = at(scene, p)
    field = scene.canvas.zeros()
    add_ellipse(field, scene.canvas, Ellipse(x, y, p["r"], p["r"] * 0.9), 1.0, profile="dome")
    for dx, dy, s in p["lobes"]:
        add_ellipse(field, scene.canvas, Ellipse(x + dx, y + dy, p["r"] * s, p["r"] * s), 1.0, profile="dome")
    field = np.clip(field, 0, 1)
    opacify(scene, np.clip(field * 2, 0, 1), 0.95 * one_lung(scene))
    densify(scene, field, 0.15 + 0.10 * p["sev"])


def p_lung_lesion(rng):
    return dict(spot(rng, u=(0.3, 0.8), v=(0.15, 0.75)), sev=severity(rng, 0.5), r=float(rng.uniform(0.06, 0.09)),
                wall=float(rng.uniform(0.016, 0.025)), fluid=bool(rng.random() < 0.4))


def d_lung_lesion(scene, p, rng):
    """Cavitating lesion: a thick-walled ring with a lucent centre (sometimes an air-fluid level)."""
    x, y = at(scene, p)
    ring = scene.canvas.zeros()
    add_ring(ring, scene.canvas, Ellipse(x, y, p["r"], p["r"]), p["wall"] * 2, 1.0)
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
        add_ellipse(scene.bone, scene.canvas, Ellipse(x, y, item["r"], item["r"]),
                    0.40 + 0.2 * p["sev"], profile="dome")


def p_tuberculosis(rng):
    return dict(side=side_of(rng, 0.6), sev=severity(rng), u=float(rng.uniform(0.35, 0.65)),
                v=float(rng.uniform(0.08, 0.25)), w=float(rng.uniform(0.55, 0.85)), cavity=bool(rng.random() < 0.6),
                r=float(rng.uniform(0.03, 0.05)),
                calcified=[(float(dx), float(dy)) for dx, dy in rng.normal(0, 0.06, (2, 2))])


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
        add_ring(ring, scene.canvas, Ellipse(x, y, p["r"], p["r"]), 0.012, 1.0)
        densify(scene, ring, 0.2)
        lucency(scene, blob(scene, x, y, p["r"] * 0.8, p["r"] * 0.8, profile="flat"), 0.3)
    for dx, dy in p["calcified"]:
        add_ellipse(scene.bone, scene.canvas, Ellipse(x + dx, y + dy, 0.012, 0.012), 0.35)


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


def p_emphysema(rng):
    return dict(sev=severity(rng, 0.5))


def a_emphysema(anatomy, p):
    s = p["sev"]
    return replace(anatomy, air=anatomy.air * (1.12 + 0.15 * s), markings=anatomy.markings * (0.6 - 0.2 * s),
                   dome_r=anatomy.dome_r + 0.06 + 0.06 * s, dome_l=anatomy.dome_l + 0.06 + 0.06 * s,
                   cp_drop=anatomy.cp_drop * (0.55 - 0.15 * s), ap_half=anatomy.ap_half + 0.04 + 0.03 * s,
                   thorax_w=anatomy.thorax_w + 0.02)


def p_azygos(rng):
    return dict(sev=severity(rng, 0.6), u=float(rng.uniform(0.3, 0.55)), bow=float(rng.uniform(0.03, 0.07)),
                end=float(rng.uniform(-0.33, -0.24)))


def d_azygos(scene, p, rng):
    """Azygos fissure: a thin curved line from the right apex to a teardrop at the tracheobronchial angle."""
    a = scene.anatomy
    start = (-(a.medi_hw + 0.03 + p["u"] * 0.45 * a.thorax_w), a.apex_y + 0.03)
    end = (-(a.medi_hw + 0.035), p["end"])
    mid = ((start[0] + end[0]) / 2 - p["bow"], (start[1] + end[1]) / 2)
    line = strokes(scene.canvas, [([start, mid, end], 0.026, 1.0)])
    densify(scene, line, 0.45 + 0.2 * p["sev"])
    drop = blob(scene, end[0], end[1] + 0.02, 0.032, 0.045, profile="dome")
    opacify(scene, drop, 0.9)
    densify(scene, drop, 0.12)


def p_fissure(rng):
    return dict(sev=severity(rng, 0.5), top=(float(rng.uniform(0.7, 0.9)), float(rng.uniform(0.12, 0.25))),
                bottom=float(rng.uniform(0.12, 0.3)), thick=float(rng.uniform(0.025, 0.035)),
                lens=bool(rng.random() < 0.5))


def d_fissure(scene, p, rng):
    """Thickened (fluid-filled) major fissure: an oblique line only the lateral view shows."""
    w0, v0 = p["top"]
    x0, y0 = scene.place(-1, 0.5, v0, w0)
    x1, y1 = scene.place(-1, 0.5, 1.0, p["bottom"])
    mid = ((x0 + x1) / 2 - 0.03, (y0 + y1) / 2 + 0.02)
    field = strokes(scene.canvas, [([(x0, y0), mid, (x1, y1)], p["thick"], 1.0)])
    if p["lens"]:
        add_ellipse(field, scene.canvas, Ellipse(mid[0], mid[1], 0.09, 0.035, angle=np.arctan2(y1 - y0, x1 - x0)), 1.0)
    field = np.clip(field, 0, 1)
    opacify(scene, field, 0.9)
    densify(scene, field, 0.18 + 0.12 * p["sev"])
