"""CXR-CML's Student-t mixture: EM recovers a known 2-D mixture, never lowers the likelihood, and shrugs off the
outliers that pull a Gaussian mixture's means."""

import numpy as np
import pytest
from scipy.stats import multivariate_t
from sklearn.mixture import GaussianMixture

from chexfusion.student_t_mixture import StudentTMixture

MEANS = np.array([[-3.0, 0.0], [3.0, 1.0]])
COVS = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.6, -0.2], [-0.2, 1.2]]])
WEIGHTS = np.array([0.3, 0.7])


def sample(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, WEIGHTS)
    return np.concatenate([multivariate_t(m, c, df=4).rvs(size=k, random_state=rng)
                           for m, c, k in zip(MEANS, COVS, counts)])


def by_mean(model):
    order = np.argsort(model.means_[:, 0])
    return model.weights_[order], model.means_[order], model.covariances_[order]


def test_em_recovers_a_known_mixture_and_never_lowers_the_likelihood():
    model = StudentTMixture(2, nu=4).fit(sample(4000, 0))
    weights, means, covs = by_mean(model)
    assert weights == pytest.approx(WEIGHTS, abs=0.02)
    assert np.abs(means - MEANS).max() < 0.1
    assert np.abs(covs - COVS).max() < 0.15
    assert np.all(np.diff(model.log_likelihoods_) > -1e-9)
    x = np.array([[-3.0, 0.0], [3.0, 1.0]])
    assert list(model.predict(x)) == list(np.argsort(np.argsort(model.means_[:, 0])))


def test_outliers_pull_a_gaussian_mean_more_than_the_t_mean():
    rng = np.random.default_rng(1)
    outliers = np.stack([rng.uniform(7, 12, 80), rng.uniform(-1, 3, 80)], axis=1)  # 4%, off one side of a cluster
    x = np.concatenate([sample(2000, 2), outliers])
    t_means = by_mean(StudentTMixture(2, nu=4).fit(x))[1]
    gaussian = GaussianMixture(2, random_state=0).fit(x)
    g_means = gaussian.means_[np.argsort(gaussian.means_[:, 0])]
    assert np.abs(t_means - MEANS).max() < 0.1 and np.abs(g_means - MEANS).max() > 0.2


def test_nu_must_be_positive():
    with pytest.raises(ValueError, match="nu must be > 0"):
        StudentTMixture(2, nu=0).fit(sample(100, 0))
