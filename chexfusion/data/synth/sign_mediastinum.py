"""Signatures of the heart, great vessels, hila and mediastinum, and of the spaces
around them (hiatal hernia, pneumomediastinum, free air under the diaphragm)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .anatomy import lateral_dome, lateral_front
from .drawing import F32, Ellipse, add_ellipse, add_ring, soft_inside, strokes
from .signs import blob, densify, lucency, opacify, severity


def p_adenopathy(rng):
    sides = [[-1], [1], [-1, 1]][int(rng.integers(0, 3))]
    return dict(sev=severity(rng), sides=sides, r=float(rng.uniform(0.055, 0.08)),
                nodes=[(float(dx), float(dy)) for dx, dy in zip(rng.uniform(0, 0.04, 3), rng.uniform(-0.09, 0.07, 3))],
                paratracheal=bool(rng.random() < 0.5))


def d_adenopathy(scene, p, rng):
    """Lobulated enlargement of the hila (and the right paratracheal stripe)."""
    a = scene.anatomy
    field = scene.canvas.zeros()
    if scene.view == "frontal":
        for side in p["sides"]:
            for dx, dy in p["nodes"]:
                add_ellipse(field, scene.canvas,
                            Ellipse(side * (a.medi_hw + 0.07 + dx), -0.06 + dy, p["r"], p["r"] * 1.1),
                            1.0, profile="dome")
        if p["paratracheal"]:
            add_ellipse(field, scene.canvas, Ellipse(a.spine_x - a.medi_hw + 0.01, -0.42, 0.04, 0.07),
                        1.0, profile="dome")
    else:
        for dx, dy in p["nodes"]:
            add_ellipse(field, scene.canvas,
                        Ellipse(0.02 * a.ap_half - 0.04 + 2 * dx, -0.10 + dy, p["r"] * 1.2, p["r"] * 1.2),
                        1.0, profile="dome")
    field = np.clip(field, 0, 1)
    opacify(scene, field, 0.95)
    densify(scene, field, 0.08 + 0.08 * p["sev"])


def a_cardiomegaly(anatomy, p):
    return replace(anatomy, heart_hw=anatomy.heart_hw * (1.22 + 0.25 * p["sev"]))


def a_enlarged_cardiomediastinum(anatomy, p):
    return replace(anatomy, medi_hw=anatomy.medi_hw * (1.35 + 0.4 * p["sev"]),
                   retrosternal_fill=anatomy.retrosternal_fill + 0.45 + 0.4 * p["sev"])


def a_tortuous_aorta(anatomy, p):
    return replace(anatomy, aorta_wave=0.08 + 0.06 * p["sev"], knob_r=anatomy.knob_r * (1.4 + 0.3 * p["sev"]))


def d_aortic_calcification(scene, p, rng):
    """A thin bright arc along the rim of the aortic knob, and specks along the descending aorta."""
    a = scene.anatomy
    cx, cy = a.medi_hw + 0.005, -0.30
    add_ring(scene.bone, scene.canvas, Ellipse(cx, cy, a.knob_r * 0.95, a.knob_r * 1.05),
             0.028 + 0.01 * p["sev"], 0.45 + 0.25 * p["sev"], arc=(-2.9, 0.8))
    for k, dy in enumerate(p["specks"]):
        add_ellipse(scene.bone, scene.canvas, Ellipse(a.spine_x + 0.10 + 0.01 * k, cy + 0.12 + dy, 0.014, 0.02), 0.4)


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


def p_hernia(rng):
    return dict(sev=severity(rng, 0.6), r=float(rng.uniform(0.11, 0.15)), gas=float(rng.uniform(0.4, 0.6)),
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
    lucency(scene, gas, 0.45 + 0.2 * p["sev"])
    ring = scene.canvas.zeros()
    add_ring(ring, scene.canvas, Ellipse(x, y, p["r"] * 1.15, p["r"]), 0.01, 1.0)
    densify(scene, ring, 0.1)


def p_pneumomediastinum(rng):
    return dict(sev=severity(rng, 0.55), r=float(rng.uniform(0.075, 0.095)))


def d_pneumomediastinum(scene, p, rng):
    """Air outlining the central arteries ("ring around the artery") and a retrosternal lucent streak."""
    a = scene.anatomy
    D = a.ap_half
    ring = scene.canvas.zeros()
    add_ring(ring, scene.canvas, Ellipse(0.02 * D, -0.10, p["r"], p["r"] * 1.15), 0.03, 1.0)
    front = lateral_front(a)
    streak = strokes(scene.canvas, [([(front + 0.06, -0.60), (front + 0.09, -0.30), (front + 0.12, -0.05)], 0.028, 1.0),
                                    ([(-0.15 * D, -0.55), (-0.05 * D, -0.40)], 0.02, 1.0)])
    lucency(scene, np.clip(ring + streak, 0, 1), 0.35 + 0.2 * p["sev"])
    line = [(front + 0.10, -0.60), (front + 0.13, -0.30), (front + 0.16, -0.05)]
    pleura = strokes(scene.canvas, [(line, 0.008, 1.0)])
    densify(scene, pleura, 0.25)


def p_pneumoperitoneum(rng):
    return dict(sev=severity(rng, 0.6), thick=float(rng.uniform(0.035, 0.05)), extent=float(rng.uniform(0.4, 0.65)))


def d_pneumoperitoneum(scene, p, rng):
    """Free air: a lucent crescent under the anterior hemidiaphragm, against the liver."""
    a = scene.anatomy
    front = lateral_front(a)
    w = scene.canvas.window(front, -1, front + p["extent"], 1)
    rows, cols, X, Y = w
    dome = lateral_dome(a, X)
    band = soft_inside(np.abs(Y - dome - 0.012 - p["thick"] / 2) - p["thick"] / 2, scene.canvas.edge)
    fade = np.clip((front + p["extent"] - X) / 0.1, 0, 1) * np.clip((X - front) / 0.05, 0, 1)
    scene.tissue[rows, cols] -= ((0.4 + 0.2 * p["sev"]) * band * fade).astype(F32)
