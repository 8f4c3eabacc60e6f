"""Support devices: tubes, lines, leads and generators, the same subset on every view of a study."""

from __future__ import annotations

import numpy as np

from .anatomy import frontal_dome_peak, lateral_dome, lateral_front, lateral_spine_x
from .drawing import Ellipse, add_ellipse, add_ring, strokes
from .signs import side_of


def p_devices(rng):
    kinds = {"ett": 0.45, "ng": 0.4, "cvc": 0.5, "pacer": 0.2, "ecg": 0.35, "wires": 0.15, "chest_tube": 0.12}
    chosen = [k for k, prob in kinds.items() if rng.random() < prob]
    while len(chosen) < 2:  # a patient with devices rarely has just one
        extra = str(rng.choice(list(kinds)))
        if extra not in chosen:
            chosen.append(extra)
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
        for off in (-0.02, 0.02):
            lines.append(([(a.spine_x + off, -1.05), (a.spine_x + off, tip)], 0.019, 0.85))
        lines.append(([(a.spine_x + 0.012, -1.05), (a.spine_x + 0.012, tip)], 0.011, 1.05))  # radiopaque stripe
    if "ng" in p["kinds"]:
        dome = frontal_dome_peak(a, 1)
        lines.append(([(a.spine_x + 0.01, -1.05), (a.spine_x + 0.03, -0.2), (0.06, dome), (0.25 * W, dome + 0.1),
                       (0.45 * W, dome + 0.14)], 0.024, 0.95))
    if "cvc" in p["kinds"]:
        s = p["side"]
        lines.append(([(s * 0.6 * W, -0.70), (s * 0.3 * W, -0.62), (-(a.medi_hw - 0.02), -0.45),
                       (-(a.medi_hw - 0.03), -0.12)], 0.02, 1.05))
    if "pacer" in p["kinds"]:
        s = p["pacer_side"]
        gx, gy = s * 0.55 * W, -0.58
        add_ellipse(metal, c, Ellipse(gx, gy, 0.075, 0.055), 1.3, profile="flat")
        tip = (a.heart_x + 0.3 * a.heart_hw, frontal_dome_peak(a, 1) - 0.08)
        lines.append(([(gx, gy), (s * 0.1, -0.5), (-(a.medi_hw - 0.02), -0.25), (-0.02, -0.02), tip], 0.022, 1.15))
        lines.append(([(gx, gy), (s * 0.12, -0.48), (-(a.medi_hw - 0.01), -0.2), (-0.08, -0.05)], 0.022, 1.15))
    if "ecg" in p["kinds"]:
        for ex, ey in p["ecg"]:
            add_ring(metal, c, Ellipse(ex, ey, 0.045, 0.045), 0.016, 1.0)
            add_ellipse(metal, c, Ellipse(ex, ey, 0.016, 0.016), 1.2)
            lines.append(([(ex, ey), (ex * 1.3 + 0.1, ey + 0.25), (np.sign(ex + 1e-3) * 1.1, ey + 0.5)], 0.014, 0.85))
    if "wires" in p["kinds"]:
        for k in range(p["n_wires"]):
            y = -0.50 + k * 0.55 / max(1, p["n_wires"] - 1)
            add_ring(metal, c, Ellipse(a.spine_x, y, 0.03, 0.02), 0.016, 1.3)
    if "chest_tube" in p["kinds"]:
        s = p["tube_side"]
        lines.append(([(s * (a.body_w + 0.1), 0.25), (s * (W - 0.02), 0.05), (s * 0.7 * W, -0.35),
                       (s * 0.45 * W, a.apex_y + 0.12)], 0.035, 0.95))
    scene.metal += strokes(c, lines) + metal


def d_devices_lateral(scene, p, rng):
    a = scene.anatomy
    c = scene.canvas
    D = a.ap_half
    lines, metal = [], c.zeros()
    front = lateral_front(a)
    if "ett" in p["kinds"]:
        tip_y = -0.2 - p["ett_tip"]
        for off in (-0.02, 0.02):
            lines.append(([(-0.02 + off, -1.05), (0.06 * D + off, -0.55), (0.09 * D + off, tip_y)], 0.019, 0.85))
    if "ng" in p["kinds"]:
        sx = float(lateral_spine_x(a, 0.0)) - 0.13
        lines.append(([(0.05, -1.05), (sx - 0.05, -0.4), (sx, float(lateral_dome(a, sx))),
                       (0.1 * D, float(lateral_dome(a, 0.1 * D, "left")) + 0.12)], 0.024, 0.95))
    if "cvc" in p["kinds"]:
        lines.append(([(front + 0.08, -0.70), (-0.2 * D, -0.45), (-0.12 * D, -0.25), (-0.12 * D, -0.12)], 0.02, 1.05))
    if "pacer" in p["kinds"]:
        gx, gy = front - 0.02, -0.52
        add_ellipse(metal, c, Ellipse(gx, gy, 0.03, 0.07), 1.3, profile="flat")
        tip_y = float(lateral_dome(a, -0.4 * D)) - 0.05
        lines.append(([(gx, gy), (-0.25 * D, -0.35), (-0.15 * D, -0.15), (-0.45 * D, tip_y)], 0.022, 1.15))
    if "ecg" in p["kinds"]:
        for _ex, ey in p["ecg"]:
            add_ring(metal, c, Ellipse(front - 0.08, ey, 0.02, 0.045), 0.016, 1.0)
    if "wires" in p["kinds"]:
        for k in range(p["n_wires"]):
            y = -0.50 + k * 0.55 / max(1, p["n_wires"] - 1)
            add_ring(metal, c, Ellipse(-D + 0.05 - 0.03 * (y + 0.5), y, 0.018, 0.028), 0.016, 1.3)
    if "chest_tube" in p["kinds"]:
        lines.append(([(0.5 * D, 0.3), (0.4 * D, -0.1), (0.1 * D, -0.45), (-0.1 * D, a.apex_y + 0.15)], 0.035, 0.95))
    scene.metal += strokes(c, lines) + metal
