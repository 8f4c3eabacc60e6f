"""CXR-CML (Madhipati et al., MICCAI 2025, arXiv 2507.19398): clusters of the image embeddings that define the
positives and negatives of the metric term of its loss.

The paper fits a Gaussian mixture to the latent space, refines its clusters with the Student-t distribution,
and adds a triplet loss on the embeddings so that studies of one cluster move together and away from the others:
``L = L_c + lambda * L_m`` (``L_c`` the contrastive loss, ``L_m`` the triplet loss: ``losses.py``; ``lambda`` is
``loss.cml_weight``). Here:

- the embeddings are the image tower's unit embeddings of every training study (all its views averaged, no
  augmentation), optionally reduced to ``loss.cml_dims`` principal components (scikit-learn's PCA), because a
  full-covariance mixture of tens of components in the whole shared space has more parameters than a small
  training set has studies;
- the mixture has ``loss.cml_components`` components (0: one per training class), initialised by
  scikit-learn's ``GaussianMixture`` and refined by the Student-t EM of ``student_t_mixture.py`` (Peel &
  McLachlan 2000; ``nu`` = ``loss.cml_nu``, 4 by default); each study's cluster is its most probable component;
- it is re-fitted every ``loss.cml_refit_every`` epochs, at the start of the epoch, from the weights of that
  moment. The assignments are written to ``cml_clusters.json`` in the run folder, so a run resumed in the middle
  of an epoch reads the clusters the uninterrupted run used rather than re-fitting from later weights.

This follows the paper's description. The authors' published code (chinnarouge/CXR-CML) differs: a Bayesian
Gaussian mixture per batch, no Student-t step, an image-to-text hinge that is zero in practice; the comparison is
in docs/zero_shot.md ("CXR-CML").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write_json
from ..student_t_mixture import StudentTMixture

CLUSTERS_FILE = "cml_clusters.json"


def fit_clusters(embeddings: np.ndarray, components: int, nu: float, dims: int, seed: int) -> np.ndarray:
    """Each row's cluster: a Gaussian mixture refined into a Student-t mixture, in ``dims`` principal components
    (0: all dimensions). At most one component per two rows."""
    from sklearn.decomposition import PCA

    x = np.asarray(embeddings, dtype=np.float64)
    if dims and dims < x.shape[1]:
        x = PCA(n_components=min(dims, len(x)), svd_solver="full").fit_transform(x)
    components = max(1, min(components, len(x) // 2))
    return StudentTMixture(components, nu=nu, seed=seed).fit(x).predict(x).astype(np.int64)


class ClusterAssignments:
    """The training studies' clusters, re-fitted at the start of every ``cml_refit_every``-th epoch (an epoch
    setter of the training loop); ``of(study_indices)`` gives a batch's clusters."""

    def __init__(self, cfg, num_classes: int, model, pairs, run_dir: Path):
        self.cfg, self.model, self.pairs = cfg, model, pairs
        self.components = cfg.loss.cml_components or num_classes
        self.path, self.epoch, self.assignments = Path(run_dir) / CLUSTERS_FILE, -1, np.zeros(0, np.int64)

    def set_epoch(self, epoch: int) -> None:
        refit = epoch - epoch % self.cfg.loss.cml_refit_every
        if refit == self.epoch:
            return
        stored = self._stored(refit)
        if stored is None:
            stored = fit_clusters(self._embeddings(), self.components, self.cfg.loss.cml_nu, self.cfg.loss.cml_dims,
                                  self.cfg.seed + refit)
            atomic_write_json(self.path, {"epoch": refit, "components": self.components,
                                          "assignments": stored.tolist()})
        self.epoch, self.assignments = refit, stored

    def of(self, studies: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.assignments, device=studies.device)[studies]

    def _stored(self, epoch: int) -> np.ndarray | None:
        """The assignments already fitted for ``epoch`` (by this run, before it was interrupted), if any."""
        import json

        if not self.path.is_file():
            return None
        try:
            record = json.loads(self.path.read_text())
        except json.JSONDecodeError:
            return None
        if record.get("epoch") != epoch or len(record.get("assignments", [])) != len(self.pairs):
            return None
        return np.asarray(record["assignments"], dtype=np.int64)

    @torch.no_grad()
    def _embeddings(self) -> np.ndarray:
        """Every training study's image embedding (all its views, no augmentation), in eval mode; the global
        random state is left as it was, so fitting clusters does not shift what training draws next."""
        was_training, device = self.model.training, next(self.model.parameters()).device
        self.model.eval()
        out = []
        chunk = self.cfg.train.batch_size
        with torch.random.fork_rng(devices=[]):
            for start in range(0, len(self.pairs), chunk):
                studies = self.pairs.study_rows[start:start + chunk]
                images = torch.stack([self.pairs.images[int(r)]["image"] for rows in studies for r in rows])
                owner = torch.repeat_interleave(torch.arange(len(studies)), torch.tensor([len(r) for r in studies]))
                out.append(self.model.encode_images(images.to(device), owner.to(device)).float().cpu())
        self.model.train(was_training)
        return torch.cat(out).numpy()
