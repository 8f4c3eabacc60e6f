"""A mixture of multivariate Student-t distributions fitted by EM: CXR-CML's clusters of image embeddings.

CXR-CML (seed 003) groups the image embeddings of a CLIP model into clusters whose assignments give the metric
term of its loss (a triplet loss on cluster-defined positives and negatives). It starts from a Gaussian mixture
and refines it into a Student-t mixture: the t's heavy tails keep the outlying embeddings of a long-tailed
dataset from dragging a cluster's mean and covariance (Peel & McLachlan, "Robust mixture modelling using the t
distribution", Statistics and Computing 2000). scikit-learn has the Gaussian mixture (used here for the
initialisation) but no Student-t mixture, and neither has SciPy (which gives the density, ``multivariate_t``);
so the refinement is the EM of Peel & McLachlan with the degrees of freedom ``nu`` fixed (4 by default: our
choice; the authors' published code has no Student-t step at all, see docs/zero_shot.md):

- E-step: responsibilities ``tau_ik ∝ pi_k t(x_i; mu_k, Sigma_k, nu)`` and the latent scale weights
  ``u_ik = (nu + d) / (nu + delta_ik)``, ``delta_ik = (x_i - mu_k)^T Sigma_k^-1 (x_i - mu_k)``;
- M-step: ``pi_k = mean_i tau_ik``, ``mu_k = sum_i tau_ik u_ik x_i / sum_i tau_ik u_ik``,
  ``Sigma_k = sum_i tau_ik u_ik (x_i - mu_k)(x_i - mu_k)^T / sum_i tau_ik`` (+ ``reg_covar`` on the diagonal,
  as scikit-learn does, so a cluster cannot collapse onto a point).

Each iteration does not decrease the log-likelihood (an EM property; the tests check it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_t
from sklearn.mixture import GaussianMixture


@dataclass
class StudentTMixture:
    """``fit(x)`` then ``predict(x)`` / ``predict_proba(x)``, as scikit-learn's mixtures."""

    n_components: int
    nu: float = 4.0
    max_iter: int = 100
    tol: float = 1e-4  # stop when the mean log-likelihood per sample improves by less
    reg_covar: float = 1e-6
    seed: int = 0
    weights_: np.ndarray = field(init=False, repr=False)
    means_: np.ndarray = field(init=False, repr=False)
    covariances_: np.ndarray = field(init=False, repr=False)
    log_likelihoods_: list[float] = field(init=False, repr=False, default_factory=list)

    def fit(self, x: np.ndarray) -> StudentTMixture:
        if self.nu <= 0:
            raise ValueError(f"nu must be > 0, got {self.nu}")
        x = np.asarray(x, dtype=np.float64)
        gaussian = GaussianMixture(self.n_components, covariance_type="full", reg_covar=self.reg_covar,
                                   random_state=self.seed).fit(x)
        self.weights_, self.means_ = gaussian.weights_.copy(), gaussian.means_.copy()
        self.covariances_ = gaussian.covariances_.copy()
        self.log_likelihoods_ = []
        for _ in range(self.max_iter):
            log_joint = self._log_joint(x)
            self.log_likelihoods_.append(float(logsumexp(log_joint, axis=1).mean()))
            self._m_step(x, np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True)))
            if len(self.log_likelihoods_) > 1 and self.log_likelihoods_[-1] - self.log_likelihoods_[-2] < self.tol:
                break
        return self

    def _log_joint(self, x: np.ndarray) -> np.ndarray:
        """``log pi_k + log t(x_i; mu_k, Sigma_k, nu)``, ``[N, K]``."""
        return np.stack([np.log(w) + multivariate_t(m, c, df=self.nu).logpdf(x)
                         for w, m, c in zip(self.weights_, self.means_, self.covariances_)], axis=1)

    def _m_step(self, x: np.ndarray, tau: np.ndarray) -> None:
        d = x.shape[1]
        for k in range(self.n_components):
            diff = x - self.means_[k]
            delta = np.einsum("ij,jk,ik->i", diff, np.linalg.inv(self.covariances_[k]), diff)
            tu = tau[:, k] * (self.nu + d) / (self.nu + delta)
            self.means_[k] = tu @ x / tu.sum()
            diff = x - self.means_[k]
            self.covariances_[k] = (tu[:, None] * diff).T @ diff / tau[:, k].sum() + self.reg_covar * np.eye(d)
        self.weights_ = tau.mean(axis=0)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        log_joint = self._log_joint(np.asarray(x, dtype=np.float64))
        return np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)
