"""Bits/dim of discrete data on densities whose answer is exact. The logit's round trip and
log-det against autograd are in test_bijections.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flowtrain.data.base import FlowData
from flowtrain.dequant import (
    GaussianDequantization,
    NoDequantization,
    UniformDequantization,
    auto_dequantization,
)
from flowtrain.errors import ConfigError
from flowtrain.flows.base import FlowModel, StandardNormal, UniformBase
from flowtrain.likelihood import (
    Identity,
    Preprocessing,
    Standardize,
    bits_per_dim,
    negative_log_likelihood,
)

LEVELS = 17


def _images(n: int = 32, shape=(1, 4, 4)) -> FlowData:
    values = torch.randint(0, LEVELS, (n, *shape), generator=torch.Generator().manual_seed(0))
    return FlowData(values.to(torch.uint8), values[:8].to(torch.uint8), name="fake",
                    levels=LEVELS)


class UniformOnUnitCube(FlowModel):
    """p(y) = 1 on [0, 1]^D: the model that knows nothing about the data."""

    def __init__(self, event_shape):
        super().__init__([], UniformBase(event_shape))
        self.unused = nn.Parameter(torch.zeros(()))


class LogitOfUniform(nn.Module):
    """The density of y' = logit(alpha + (1 - 2 alpha) U), U uniform on [0, 1]^D:
    a logistic density over the range, divided by (1 - 2 alpha)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def log_prob(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        per_element = (torch.nn.functional.logsigmoid(y) + torch.nn.functional.logsigmoid(-y)
                       - math.log(1 - 2 * self.alpha))
        return per_element.flatten(1).sum(dim=1)


def test_uniform_model_gives_log2_levels_bits_per_dim():
    data = _images()
    preprocessing = Preprocessing.for_data(UniformDequantization(LEVELS, 0.0), data)
    nll = negative_log_likelihood(UniformOnUnitCube(data.event_shape), preprocessing, data.train)
    assert torch.allclose(bits_per_dim(nll, data.n_dims), torch.full((32,), math.log2(LEVELS)))


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_logit_preprocessing_is_accounted_exactly(alpha):
    """The uniform model seen through the logit: still exactly log2 K bits/dim."""
    data = _images()
    preprocessing = Preprocessing.for_data(UniformDequantization(LEVELS, alpha), data)
    nll = negative_log_likelihood(LogitOfUniform(alpha), preprocessing, data.train)
    assert torch.allclose(bits_per_dim(nll, data.n_dims), torch.full((32,), math.log2(LEVELS)),
                          atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_restore_returns_the_original_levels(alpha):
    data = _images()
    dequantizer = UniformDequantization(LEVELS, alpha)
    y, _ = dequantizer(data.train)
    assert torch.equal(dequantizer.restore(y), data.train.float())


def test_dequantizers_refuse_the_wrong_kind_of_data():
    with pytest.raises(ConfigError, match="dequant=uniform"):
        NoDequantization(levels=256)
    with pytest.raises(ConfigError, match="dequant=none"):
        UniformDequantization(levels=None)
    assert isinstance(auto_dequantization(None), NoDequantization)
    assert isinstance(auto_dequantization(256), UniformDequantization)


# --- ranges and Gaussian noise (TarFlow's) -------------------------------------------------


def _affine_model(low: float, step: float, shape) -> FlowModel:
    """z = (y - low) / step, z ~ N(0, I): undoes the dequantizer's scaling, so its
    likelihood of the dequantized data is N(0, I)'s of the unscaled x + noise."""
    return FlowModel([Standardize(torch.full(shape, low), torch.full(shape, step))],
                     StandardNormal(shape))


def _standard_normal_nll(values: Tensor) -> Tensor:
    return 0.5 * (values ** 2 + math.log(2 * math.pi)).flatten(1).sum(dim=1)


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0), (-3.0, 5.0)])
def test_the_range_of_uniform_noise_does_not_change_bits_per_dim(value_range):
    """-log p of the dequantized data through a model that undoes the scaling is -log N of
    x + u, whatever range the data were scaled onto: the range's log-det is counted."""
    data = _images()
    low, high = value_range
    dequantizer = UniformDequantization(LEVELS, 0.0, range=value_range)
    y, _ = dequantizer(data.train, torch.Generator().manual_seed(1))
    assert low <= y.min() and y.max() <= high
    noise = torch.rand(data.train.shape, generator=torch.Generator().manual_seed(1))
    nll = negative_log_likelihood(_affine_model(low, (high - low) / LEVELS, (1, 4, 4)),
                                  Preprocessing(dequantizer, Identity()), data.train,
                                  torch.Generator().manual_seed(1))
    assert torch.allclose(nll, _standard_normal_nll(data.train + noise), atol=1e-4)
    assert torch.equal(dequantizer.restore(y), data.train.float())


def test_gaussian_noise_is_accounted_exactly_and_rounds_back():
    """y = -1 + 2 x / (K - 1) + sigma eps: -log p through the model that undoes the scaling
    is -log N of x + eps sigma (K - 1) / 2, in the data's own units."""
    data, sigma = _images(), 0.05
    dequantizer = GaussianDequantization(LEVELS, sigma=sigma, range=(-1.0, 1.0))
    step = 2.0 / (LEVELS - 1)
    y, _ = dequantizer(data.train, torch.Generator().manual_seed(1))
    eps = torch.randn(data.train.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(y, -1 + step * data.train + sigma * eps, atol=1e-6)
    nll = negative_log_likelihood(_affine_model(-1.0, step, (1, 4, 4)),
                                  Preprocessing(dequantizer, Identity()), data.train,
                                  torch.Generator().manual_seed(1))
    assert torch.allclose(nll, _standard_normal_nll(data.train + sigma * eps / step),
                          atol=1e-3)
    sharp = GaussianDequantization(LEVELS, sigma=0.01)  # 6 sigma within half a level
    assert torch.equal(sharp.restore(sharp(data.train)[0]), data.train.float())


@pytest.mark.parametrize("standardize", [False, True])
def test_denoising_is_the_exact_score_step(standardize):
    """For a Gaussian model the score is known: v + sigma^2 grad log p(v) with v the values
    before standardization, p(v) = N(mean, std^2)."""
    sigma, shape = 0.3, (1, 2, 2)
    mean, std = torch.full(shape, 0.5), torch.full(shape, 2.0 if standardize else 1.0)
    preprocessing = Preprocessing(GaussianDequantization(LEVELS, sigma=sigma),
                                  Standardize(mean, std) if standardize else Identity())
    model = FlowModel([], StandardNormal(shape))
    y = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    noisy = y * std + mean
    expected = noisy - sigma ** 2 * (noisy - mean) / std ** 2
    with torch.no_grad():  # as samples are drawn
        denoised = preprocessing.denoise(model, y, sigma)
    assert torch.allclose(denoised * std + mean, expected, atol=1e-6)


def test_samples_are_denoised_only_under_gaussian_noise(monkeypatch):
    shape = (1, 2, 2)
    model = FlowModel([], StandardNormal(shape))
    model.unused = nn.Parameter(torch.zeros(()))  # sample() takes its device from one
    calls = []
    monkeypatch.setattr(Preprocessing, "denoise",
                        lambda self, model, y, sigma, context=None: calls.append(sigma) or y)
    for dequantizer in (UniformDequantization(LEVELS, 0.0),
                        GaussianDequantization(LEVELS, sigma=0.1, denoise=False),
                        GaussianDequantization(LEVELS, sigma=0.1)):
        samples = Preprocessing(dequantizer, Identity()).sample(model, 3)
        assert samples.shape == (3, *shape)
    assert calls == [0.1]


def test_ranges_and_noise_are_checked():
    with pytest.raises(ConfigError, match="dequant.logit_alpha=0"):
        UniformDequantization(LEVELS, 0.05, range=(-1.0, 1.0))
    with pytest.raises(ConfigError, match="low < high"):
        UniformDequantization(LEVELS, 0.0, range=(1.0, -1.0))
    with pytest.raises(ConfigError, match="dequant.sigma must be positive"):
        GaussianDequantization(LEVELS, sigma=0.0)
    with pytest.raises(ConfigError, match="dequant=none"):
        GaussianDequantization(None)
