"""Signatures of the pleura: fluid, air, thickening and plaques."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .anatomy import frontal_dome, lateral_back, lateral_dome, lateral_front, lung_outline
from .drawing import F32, polygons, soft_inside, strokes
from .signs import at, densify, lucency, one_lung, opacify, severity, side_of


def p_effusion(rng):
    r = rng.random()
    sides = [-1] if r < 0.45 else [1] if r < 0.7 else [-1, 1]
    return dict(sev=severity(rng, 0.4), sides=sides, rise=float(rng.uniform(0.08, 0.14)),
                heights={s: float(rng.uniform(0.06, 0.45)) for s in (-1, 1)})


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
        h = p["heights"][side] * p["sev"] + 0.05
        field = effusion_field(scene, side, h, p["rise"] * min(1.0, 3 * h))
        opacify(scene, field, one_lung(scene) if len(p["sides"]) == 1 else 1.0)
        densify(scene, field * scene.lung, 0.05)


def p_pneumothorax(rng):
    return dict(side=side_of(rng), sev=severity(rng))


def ptx_scale(p):
    return 0.88 - 0.16 * p["sev"]


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
                thick=float(rng.uniform(0.045, 0.07)), apical=bool(rng.random() < 0.5))


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
                                                      size=float(rng.uniform(0.06, 0.10)),
                                                      on_dome=bool(rng.random() < 0.3),
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
