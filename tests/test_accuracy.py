"""The issue's accuracy bar, run through the real command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics, run_cli


@pytest.mark.parametrize("family", ["gaussian", "logistic"])
def test_1d_mixture_reaches_the_true_density(tmp_path, family):
    """3000 steps of batch 256: test NLL within 0.005 nats of the generating density's."""
    run_cli("model=mixture_cdf", "data=gmm1d", "train.steps=3000", "train.batch_size=256",
            f"model.family={family}",
            f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics["steps"] == 3000
    assert abs(metrics["test_nll"] - metrics["test_nll_true"]) < 0.005, metrics


def _gaussian_mixture_2d():
    weights = np.array([0.35, 0.25, 0.25, 0.15])
    means = np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0], [3.0, -0.5]])
    covariances = []
    for angle, (major, minor) in zip([0.3, 1.2, -0.7, 2.0],
                                     [(1.0, 0.3), (0.6, 0.4), (0.8, 0.2), (0.3, 0.3)],
                                     strict=True):
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        covariances.append(rotation @ np.diag([major**2, minor**2]) @ rotation.T)
    return weights, means, np.array(covariances)


def gaussian_mixture_2d_file(folder: Path) -> tuple[Path, float]:
    """gmm2d.npz in ``folder``: 20000 training and 5000 test points of a 2-D mixture of 4
    correlated Gaussians; and the true density's mean test NLL (nats per point)."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    weights, means, covariances = _gaussian_mixture_2d()
    generator = np.random.default_rng(0)

    def sample(n):
        component = generator.choice(len(weights), size=n, p=weights)
        noise = generator.normal(size=(n, 2))
        return means[component] + np.einsum("nij,nj->ni",
                                            np.linalg.cholesky(covariances)[component], noise)

    train, test = sample(20_000), sample(5_000)
    np.savez(folder / "gmm2d.npz", train=train, test=test)
    log_prob = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(test)
                          for w, m, c in zip(weights, means, covariances, strict=True)], axis=0)
    return folder / "gmm2d.npz", float(-log_prob.mean())


def test_2d_autoregressive_flow_reaches_the_true_density(tmp_path):
    """3000 steps of batch 256 on a 2-D Gaussian mixture given as an array file: test NLL
    within 0.01 nats of the generating density's."""
    path, true_nll = gaussian_mixture_2d_file(tmp_path)
    run_cli("model=arflow2d", "data=array", f"data.path={path}",
            "train.steps=3000", "train.batch_size=256", f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path)
    metrics = read_metrics(tmp_path / "run")
    assert abs(metrics["test_nll"] - true_nll) < 0.01, (metrics, true_nll)
