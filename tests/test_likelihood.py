"""Likelihood accounting on densities whose answer is known exactly. Standardize's round trip
and log-det against autograd are in test_bijections.py."""

from __future__ import annotations

import math

import torch

from flowtrain.data.gmm1d import GaussianMixture1D
from flowtrain.dequant import NoDequantization
from flowtrain.flows.mixture_cdf import MixtureCDFFlow
from flowtrain.likelihood import (
    Preprocessing,
    Standardize,
    bits_per_dim,
    negative_log_likelihood,
)


def _true_model_in_standardized_units(data: GaussianMixture1D, standardize: Standardize
                                      ) -> MixtureCDFFlow:
    """A mixture-CDF flow holding the generating mixture, moved to standardized units."""
    truth = data.mixture
    model = MixtureCDFFlow((1,), n_components=len(truth.loc)).double()
    mean, std = standardize.mean.double(), standardize.std.double()
    with torch.no_grad():
        transform = model.cdf_transform
        transform.logits.copy_(truth.logits.unsqueeze(0))
        transform.loc.copy_(((truth.loc - mean) / std).unsqueeze(0))
        transform.log_scale.copy_((truth.log_scale - torch.log(std)).unsqueeze(0))
    return model


def test_standardized_model_reports_nll_in_data_units():
    data = GaussianMixture1D([0.2, 0.8], [-5.0, 10.0], [1.0, 3.0], n_train=4000,
                             n_test=1000, standardize=True)
    preprocessing = Preprocessing.for_data(NoDequantization(), data).double()
    model = _true_model_in_standardized_units(data, preprocessing.standardize)
    x = data.test.double()
    nll = negative_log_likelihood(model, preprocessing, x)
    assert torch.allclose(nll, -data.true_log_prob(x), atol=1e-9)


def test_bits_per_dim_of_a_known_density():
    # A standard normal in D dims has differential entropy D/2 log(2 pi e) nats.
    dims = 4
    entropy_nats = dims / 2 * math.log(2 * math.pi * math.e)
    assert math.isclose(bits_per_dim(entropy_nats, dims),
                        0.5 * math.log2(2 * math.pi * math.e))


def test_fit_standardize_uses_training_statistics():
    train = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    standardize = Standardize.fit(train)
    y, _ = standardize(train)
    assert torch.allclose(y.mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(y.std(0), torch.ones(2), atol=1e-6)
