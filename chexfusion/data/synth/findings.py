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
v apex->base, w anterior->posterior). The drawing code lives in the
``sign_*`` modules by anatomical system; this module is the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .sign_chest_wall import (
    a_clavicle_fracture,
    a_fracture,
    a_kyphosis,
    a_rib_fracture,
    d_rib_fracture,
    d_subcutaneous,
    p_clavicle_fracture,
    p_fracture,
    p_kyphosis,
    p_rib_fracture,
    p_subcutaneous,
)
from .sign_devices import d_devices_frontal, d_devices_lateral, p_devices
from .sign_lungs import (
    a_atelectasis,
    a_emphysema,
    a_fibrosis,
    a_lobar_atelectasis,
    d_atelectasis,
    d_azygos,
    d_consolidation,
    d_edema,
    d_embolism,
    d_fibrosis,
    d_fissure,
    d_granuloma,
    d_infarction,
    d_infiltration,
    d_lobar_atelectasis,
    d_lung_lesion,
    d_lung_opacity,
    d_mass,
    d_nodule,
    d_pneumonia,
    d_rounded_atelectasis,
    d_tuberculosis,
    p_atelectasis,
    p_azygos,
    p_consolidation,
    p_edema,
    p_embolism,
    p_emphysema,
    p_fibrosis,
    p_fissure,
    p_granuloma,
    p_infarction,
    p_infiltration,
    p_lobar_atelectasis,
    p_lung_lesion,
    p_lung_opacity,
    p_mass,
    p_nodule,
    p_pneumonia,
    p_rounded_atelectasis,
    p_tuberculosis,
)
from .sign_mediastinum import (
    a_cardiomegaly,
    a_enlarged_cardiomediastinum,
    a_hypertension,
    a_tortuous_aorta,
    d_adenopathy,
    d_aortic_calcification,
    d_hernia,
    d_hypertension,
    d_pneumomediastinum,
    d_pneumoperitoneum,
    p_adenopathy,
    p_aortic_calcification,
    p_hernia,
    p_hypertension,
    p_pneumomediastinum,
    p_pneumoperitoneum,
)
from .sign_pleura import (
    a_hydropneumothorax,
    a_pneumothorax,
    d_effusion,
    d_hydropneumothorax,
    d_pleural_other,
    d_pleural_thickening,
    d_pneumothorax,
    p_effusion,
    p_hydropneumothorax,
    p_pleural_other,
    p_pleural_thickening,
    p_pneumothorax,
)
from .signs import BOTH, FRONTAL_ONLY, LATERAL_ONLY, p_sev


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
