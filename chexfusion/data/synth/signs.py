"""Helpers the finding signatures share: placing a lesion, and what it does to the layers.

A lesion is placed in view-independent chest coordinates (:meth:`anatomy.Scene.place`)
and acts on the scene's layers in one of three ways: it fills the air of the
lung (fluid, cells, collapse), it adds soft-tissue density (a solid mass), or it
adds air (pneumothorax, free air).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .drawing import F32, Ellipse, add_ellipse, smooth_noise

BOTH = ("frontal", "lateral")
FRONTAL_ONLY = ("frontal",)
LATERAL_ONLY = ("lateral",)
# On the lateral view the two lungs are superimposed: a process in one lung only
# removes part of the air along the ray.
ONE_LUNG_ON_LATERAL = 0.7


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
    add_ellipse(field, scene.canvas, Ellipse(x, y, a, b, angle=angle), value, profile=profile)
    return field


def one_lung(scene):
    return ONE_LUNG_ON_LATERAL if scene.view == "lateral" else 1.0


def patch_texture(scene, rng, cells, floor=0.35):
    """Mottled texture in [floor, 1]: ill-defined opacities are not uniform."""
    noise = smooth_noise(rng, scene.canvas, cells)
    return np.clip(floor + (1 - floor) * (0.6 + 0.5 * noise), 0, 1)


def raise_dome(anatomy, side, amount):
    if side < 0:
        return replace(anatomy, dome_r=anatomy.dome_r - amount)
    return replace(anatomy, dome_l=anatomy.dome_l - amount)


def p_sev(rng):
    return dict(sev=severity(rng))
