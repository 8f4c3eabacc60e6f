"""The synthetic demo dataset (``chexfusion synth``).

A CXR-LT-shaped dataset small enough for a laptop: simplified frontal and
lateral radiographs on which every CXR-LT finding has a learnable visual
signature, some of them visible in one view only, with the real class
prevalences, co-occurrence, view codes and study sizes. See
docs/synthetic.md for the signatures and the generative model.

Modules: :mod:`.labels` (which findings a study has), :mod:`.cohort`
(patients, studies, splits, views, ids), :mod:`.anatomy` and
:mod:`.findings` (the pictures), :mod:`.radiograph` (one image from its
seeds), :mod:`.external` (the NIH-format set), :mod:`.command` (the CLI).
"""

# Bump when the same arguments would produce different files.
GENERATOR_VERSION = "1.0"
