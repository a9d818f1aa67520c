"""Bits/dim of discrete data on densities whose answer is exact. The logit's round trip and
log-det against autograd are in test_bijections.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flowtrain.data.base import FlowData
from flowtrain.dequant import NoDequantization, UniformDequantization, auto_dequantization
from flowtrain.errors import ConfigError
from flowtrain.flows.base import FlowModel, UniformBase
from flowtrain.likelihood import Preprocessing, bits_per_dim, negative_log_likelihood

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
