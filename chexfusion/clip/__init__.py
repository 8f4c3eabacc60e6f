"""Contrastive image-report training (``chexfusion clip``): a CLIP-style model scored zero-shot by prompts.

- ``config.py``: the ``clip`` run's config (data, the two towers, the loss, prompts, ``train.*``);
- ``reports.py``: each training study's report, held-out findings' sentences removed;
- ``data.py``: batches of studies, one image sampled per epoch or all views pooled, with their report tokens;
- ``model.py``: the image tower (any timm backbone), the text tower (any Hugging Face encoder), projections to a
  shared space and the learned temperature; a run folder built and rebuilt;
- ``losses.py``: symmetric InfoNCE (CLIP / ConVIRT) and CXR-CML's triplet term on cluster-defined pairs;
- ``cml.py``: CXR-CML's clusters of the image embeddings (Gaussian mixture refined into a Student-t mixture);
- ``train.py``: the run, through the loop both stages share (``training.fit``).
"""
