"""Heat maps of a run's findings, and how well they point at where the findings are.

:mod:`.models` (a loaded stage-1 or stage-2 run as the methods see it),
:mod:`.cam` (Grad-CAM, Group-CAM, the decoder's attention), :mod:`.regions`
(ground-truth regions: synth's masks, box CSVs, VinDr-CXR), :mod:`.scores`
(pointing game, energy inside, random baseline), :mod:`.command`
(``chexfusion explain``) and :mod:`.localize` (``chexfusion localize``).
docs/explanations.md has the measured table.
"""
