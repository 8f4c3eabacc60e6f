"""Signatures of the chest wall: fractures (every one a cortical break, at different
places), kyphosis, and air in the soft tissues."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .anatomy import lateral_spine_x, rib_point
from .drawing import F32, Ellipse, add_ellipse, strokes
from .signs import severity, side_of


def p_rib_fracture(rng):
    n = int(rng.integers(1, 4))
    k0 = int(rng.integers(3, 8))
    return dict(side=side_of(rng), sev=severity(rng), callus=bool(rng.random() < 0.85),
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
            add_ellipse(scene.bone, scene.canvas, Ellipse(x, y, 0.05, 0.034), 0.18 + 0.08 * p["sev"], profile="dome")
        else:
            sx = float(lateral_spine_x(a, 0.0))
            x, y = sx - 0.15 - 0.25 * t, a.apex_y + 0.1 + 0.088 * k
            add_ellipse(scene.bone, scene.canvas, Ellipse(x, y, 0.045, 0.032), 0.18 + 0.08 * p["sev"], profile="dome")


def p_clavicle_fracture(rng):
    return dict(side=side_of(rng), sev=severity(rng, 0.55), s=float(rng.uniform(0.35, 0.65)),
                step=float(rng.uniform(0.04, 0.06)) * rng.choice([-1, 1]), gap=float(rng.uniform(0.025, 0.035)))


def a_clavicle_fracture(anatomy, p):
    broken = (p["side"], p["s"], p["step"] * p["sev"], p["gap"])
    return replace(anatomy, clavicle_breaks=anatomy.clavicle_breaks + (broken,))


def p_fracture(rng):
    return dict(sev=severity(rng, 0.55), kind="vertebra" if rng.random() < 0.6 else "humerus",
                side=side_of(rng), level=int(rng.integers(3, 9)), step=float(rng.uniform(0.025, 0.045)))


def a_fracture(anatomy, p):
    if p["kind"] == "vertebra":
        compressed = (p["level"], 0.4 + 0.35 * p["sev"])
        return replace(anatomy, compressed_vertebra=anatomy.compressed_vertebra + (compressed,))
    return replace(anatomy, humerus_breaks=anatomy.humerus_breaks + ((p["side"], p["step"] * p["sev"]),))


def p_kyphosis(rng):
    return dict(sev=severity(rng, 0.5))


def a_kyphosis(anatomy, p):
    return replace(anatomy, kyphosis=anatomy.kyphosis + 0.13 + 0.1 * p["sev"],
                   vertebral_wedge=0.25 + 0.3 * p["sev"], ap_half=anatomy.ap_half + 0.03)


def p_subcutaneous(rng):
    n = int(rng.integers(14, 24))
    return dict(side=side_of(rng), sev=severity(rng, 0.55),
                streaks=[(float(a), float(b), float(c), float(d)) for a, b, c, d in
                         zip(rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0.04, 0.09, n),
                             rng.normal(0, 0.4, n))])


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
