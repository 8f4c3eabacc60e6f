"""One synthetic radiograph: anatomy + findings + acquisition, from a few seeds.

Every random choice comes from a generator keyed by what it belongs to:
the patient (anatomy, chronic findings), the study (acute findings, devices)
or the image (positioning, exposure, noise). So the same patient looks alike
across views and studies, the frontal and lateral images of a study show the
same lesion in matching places, a finding can be switched on or off without
changing anything else, and no result depends on the order or the process in
which images are drawn.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from ..views import FRONTAL
from .anatomy import Anatomy, draw_anatomy, render_frontal, render_lateral
from .drawing import F32, Canvas
from .findings import SIGNATURES

# Attenuation of the layers relative to soft tissue (see anatomy.py).
AIR_WEIGHT = 1.0
VESSEL_WEIGHT = 0.22


@dataclass(frozen=True)
class RadiographSpec:
    """Everything that determines one image."""

    seed: int
    patient_key: tuple  # e.g. (10, patient index): anatomy and chronic findings
    study_key: tuple  # acute findings, devices, inspiration
    image_key: tuple  # positioning, exposure, noise
    view: str  # frontal | lateral (the picture, whatever code the CSV gives it)
    portable: bool  # AP bedside film
    sex: str
    age: float
    findings: tuple  # names of the findings drawn
    size: int


def finding_key(name: str) -> int:
    """Stable integer per finding name (independent of any label-set order)."""
    return zlib.crc32(name.encode("utf-8"))


def finding_rng(spec: RadiographSpec, name: str) -> np.random.Generator:
    owner = spec.patient_key if SIGNATURES[name].persistent else spec.study_key
    return np.random.default_rng([spec.seed, *owner, 1, finding_key(name)])


def patient_anatomy(spec: RadiographSpec) -> Anatomy:
    rng = np.random.default_rng([spec.seed, *spec.patient_key, 0])
    anatomy = draw_anatomy(rng, spec.sex, spec.age)
    study = np.random.default_rng([spec.seed, *spec.study_key, 0])
    breath = study.uniform(-0.04, 0.04)  # depth of inspiration varies from study to study
    return replace(anatomy, dome_r=anatomy.dome_r + breath, dome_l=anatomy.dome_l + breath,
                   portable=spec.portable)


def draw_scene(spec: RadiographSpec, findings: tuple | None = None):
    """The layers of ``spec``'s image with ``findings`` drawn (default: all of ``spec.findings``).

    Every finding has its own seeds, so leaving one out changes nothing else:
    :mod:`.regions` compares the scene with and without each finding.
    """
    findings = spec.findings if findings is None else findings
    anatomy = patient_anatomy(spec)
    params = {name: SIGNATURES[name].params(finding_rng(spec, name)) for name in findings}
    for name in findings:
        sig = SIGNATURES[name]
        if sig.adjust is not None and spec.view in sig.views:
            anatomy = sig.adjust(anatomy, params[name])
    canvas = Canvas(spec.size)
    scene = render_frontal(anatomy, canvas) if spec.view == FRONTAL else render_lateral(anatomy, canvas)
    for name in findings:
        sig = SIGNATURES[name]
        draw = sig.frontal if spec.view == FRONTAL else sig.lateral
        if draw is not None and spec.view in sig.views:
            draw(scene, params[name], np.random.default_rng([spec.seed, *spec.image_key, 2, finding_key(name)]))
    return scene


def acquisition_rng(spec: RadiographSpec) -> np.random.Generator:
    """Positioning, exposure and noise of the image (:func:`acquire` draws the positioning first)."""
    return np.random.default_rng([spec.seed, *spec.image_key, 0])


def render(spec: RadiographSpec) -> np.ndarray:
    """The 8-bit grayscale image (size x size) for ``spec``."""
    return acquire(draw_scene(spec), acquisition_rng(spec), spec.portable)


def attenuation(scene) -> np.ndarray:
    """Total attenuation along each ray from the scene's layers."""
    air = np.clip(scene.air, 0, None)
    lung_air = np.clip(air / 0.78, 0, 1)
    att = scene.tissue - AIR_WEIGHT * air + VESSEL_WEIGHT * scene.vessels * lung_air
    att += scene.bone + scene.metal
    return np.clip(att, 0, None)


def position(att: np.ndarray, rng: np.random.Generator, portable: bool) -> np.ndarray:
    """Small rotation, magnification and shift of the patient (bedside films vary more).

    The frame is padded by repeating its edges first, so the body is not cut by
    black wedges where the shift pulls in what lies outside the canvas.
    """
    size = att.shape[0]
    angle = np.deg2rad(rng.normal(0, 3.5 if portable else 2.0))
    zoom = rng.uniform(0.94, 1.05)
    sx, sy = rng.normal(0, 0.03, size=2) * size / 2
    pad = size // 8
    padded = Image.fromarray(np.pad(att, pad, mode="edge"))
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    centre = size / 2
    # output (x, y) -> input (x, y) of the padded frame
    coeffs = (c, -s, centre - c * (centre + sx) + s * (centre + sy) + pad,
              s, c, centre - s * (centre + sx) - c * (centre + sy) + pad)
    moved = padded.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(moved, dtype=F32)


def acquire(scene, rng: np.random.Generator, portable: bool) -> np.ndarray:
    """Positioning, exposure, blur and quantum noise, as a detector would record them."""
    size = scene.canvas.size
    att = attenuation(scene)
    att = position(att, rng, portable)

    # Detector values are close to linear in attenuation (log exposure); the window
    # ("white level") varies with exposure and is wider on the thicker lateral projection.
    # Soft tissue and bone stay grey so that metal (devices) is the only pure white.
    white = rng.uniform(1.6, 1.85) if scene.view == "lateral" else rng.uniform(1.5, 1.75)
    image = att / white
    image *= 1 + rng.uniform(-0.05, 0.05) * scene.canvas.ys[:, None]  # heel effect
    np.clip(image, 0, 1, out=image)
    image **= rng.uniform(0.68, 0.88)
    blur = rng.uniform(0.4, 0.9) * size / 256
    if blur > 0.3:
        image = ndimage.gaussian_filter(image, blur, truncate=2.5)
    sigma = rng.uniform(0.008, 0.025)
    image += sigma * rng.standard_normal(image.shape, dtype=F32) * np.sqrt(image + 0.1)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
