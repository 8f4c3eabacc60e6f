"""Free-text reports for the synthetic studies: what a radiologist would have written for the study's labels.

Image-text models (CLIP / ConVIRT / CheXzero, CXR-CML) learn from report text, not label vectors, so ``synth``
writes one report per study (``reports.csv``: ``study_id, report``). A report has a FINDINGS and an IMPRESSION
section, as MIMIC-CXR's do, and is built from the study's CSV labels with the variety a text model has to read
through: several phrasings per finding, the label's synonyms from ``resources/label_synonyms.csv``, hedged
findings ("possible ...", "cannot be excluded": still positive labels, as CheXpert-style labellers read
uncertainty under the U-ones policy the CXR-LT labels follow), pertinent negatives of common findings the study
lacks ("no pleural effusion"), and normal studies described as normal. Each study's text comes from its own seed,
``(seed, study_id)``, so it does not depend on the order studies are written in and never touches the image
generator's random streams.
"""

from __future__ import annotations

import numpy as np

from .synonyms import synonyms

STREAM = 17  # the report generator's own random stream, apart from the image generator's
HEDGE_RATE = 0.15  # share of positive findings written with uncertainty
SYNONYM_RATE = 0.35  # share of findings named by a synonym instead of the label
# Findings a radiologist mentions as absent when they are (pertinent negatives), if the label set has them.
PERTINENT_NEGATIVES = ("Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Cardiomegaly", "Pneumonia")

POSITIVE = ("There is {}.", "{} is seen.", "{} is present.", "Findings are consistent with {}.",
            "There is evidence of {}.", "{} noted.")
HEDGED = ("Possible {}.", "{} cannot be excluded.", "Findings may represent {}.", "Question of {}.")
NEGATIVE = ("No {}.", "There is no {}.", "No evidence of {}.", "{} is not seen.")
NORMAL_FINDINGS = ("The lungs are clear.", "Heart size is normal.", "The cardiomediastinal silhouette is within "
                   "normal limits.", "No focal consolidation, pleural effusion or pneumothorax.",
                   "Osseous structures are unremarkable.")
NORMAL_IMPRESSION = ("No acute cardiopulmonary process.", "Normal chest radiograph.", "No acute intrathoracic "
                     "abnormality.")


def report_rng(seed: int, study_id: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), STREAM, int(study_id)])


def _phrase(name: str, rng: np.random.Generator) -> str:
    """The finding as a report names it: the label in lower case, or one of its synonyms."""
    options = synonyms(name)
    if options and rng.random() < SYNONYM_RATE:
        return str(options[rng.integers(len(options))])
    return name.lower()


def _sentence(templates: tuple[str, ...], phrase: str, rng: np.random.Generator) -> str:
    text = templates[rng.integers(len(templates))].format(phrase)
    return text[0].upper() + text[1:]


def study_report(positive: list[str], classes: list[str], normal_class: str | None, rng: np.random.Generator) -> str:
    """The report of a study whose positive labels are ``positive`` (class names out of ``classes``)."""
    findings = [name for name in positive if name != normal_class]
    if not findings:
        chosen = rng.choice(len(NORMAL_FINDINGS), size=3, replace=False)
        return (f"FINDINGS: {' '.join(NORMAL_FINDINGS[i] for i in sorted(chosen))}\n"
                f"IMPRESSION: {NORMAL_IMPRESSION[rng.integers(len(NORMAL_IMPRESSION))]}")
    sentences = []
    for name in findings:
        hedged = rng.random() < HEDGE_RATE
        sentences.append(_sentence(HEDGED if hedged else POSITIVE, _phrase(name, rng), rng))
    absent = [name for name in PERTINENT_NEGATIVES if name in classes and name not in findings]
    for k in sorted(rng.choice(len(absent), size=min(2, len(absent)), replace=False)) if absent else []:
        sentences.append(_sentence(NEGATIVE, _phrase(absent[k], rng), rng))
    order = rng.permutation(len(findings))
    impression = sentences[order[0]] if len(findings) == 1 else " ".join(sentences[i] for i in order[:2])
    return f"FINDINGS: {' '.join(sentences)}\nIMPRESSION: {impression}"
