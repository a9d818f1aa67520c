"""Autoregressive mixture-CDF flow for points: z_i = F(x_i | x_<i), base Uniform(0, 1)^D.

For D = 2 this is the seed's model: x1 through its own mixture CDF, x2 through a mixture
whose parameters a network computes from x1. A MADE gives all D conditionals in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowtrain.errors import ConfigError
from flowtrain.flows.base import Bijection, FlowModel, UniformBase
from flowtrain.flows.made import MADE
from flowtrain.flows.mixture import (
    Family,
    ScalarMixture,
    bounded_log_scale,
    initial_mixture_parameters,
)


def check_order(order: list[int] | None, n_dims: int) -> list[int]:
    """``model.order`` as a list, the natural order when it is null."""
    if order is None:
        return list(range(n_dims))
    order = [int(i) for i in order]
    if sorted(order) != list(range(n_dims)):
        raise ConfigError(f"model.order must be a permutation of 0..{n_dims - 1} for "
                          f"{n_dims}-dimensional data; got {order}")
    return order


class AutoregressiveMixtureCDF(Bijection):
    """z_i = F_i(x_i; theta_i(x_<i)); log|det| = sum_i log f_i(x_i | x_<i) (triangular)."""

    def __init__(self, n_dims: int, n_components: int, family: Family | str,
                 hidden_features: int, hidden_layers: int, order: list[int]):
        super().__init__()
        if n_components < 1 or hidden_features < 1 or hidden_layers < 0:
            raise ConfigError(f"model.n_components ({n_components}) and model.hidden_features "
                              f"({hidden_features}) must be at least 1, model.hidden_layers "
                              f"({hidden_layers}) at least 0")
        self.family = Family(family)
        self.n_components = n_components
        self.made = MADE(n_dims, 3 * n_components, hidden_features, hidden_layers, order)
        # Start as the same unconditional mixture per dimension as the 1-D flow: the output
        # weights are zero, so the biases alone give the initial parameters.
        nn.init.zeros_(self.made.output.weight)
        with torch.no_grad():
            self.made.output.bias.copy_(
                torch.cat(initial_mixture_parameters(n_components)).repeat(n_dims))

    def mixture(self, x: Tensor) -> ScalarMixture:
        logits, loc, raw_log_scale = self.made(x).split(self.n_components, dim=-1)
        return ScalarMixture(logits, loc, bounded_log_scale(raw_log_scale), self.family)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, log_pdf = self.mixture(x).cdf_and_log_pdf(x)
        return z, log_pdf.sum(dim=1)

    def inverse(self, z: Tensor) -> Tensor:
        """One network pass per dimension, in order: x_i needs x_<i."""
        return self._fill_in_order(torch.zeros_like(z),
                                   lambda mixture, dim: mixture.inverse_cdf(z[:, dim]))

    def sample_ancestral(self, n: int, like: Tensor, generator: torch.Generator | None
                         ) -> Tensor:
        return self._fill_in_order(like.new_zeros(n, self.made.n_dims),
                                   lambda mixture, dim: mixture.sample(generator=generator))

    @torch.no_grad()
    def _fill_in_order(self, x: Tensor,
                       solve: Callable[[ScalarMixture, int], Tensor]) -> Tensor:
        """Fill the zeros ``x`` dimension by dimension: x_i = solve(p(x_i | x_<i), i)."""
        for dim in self.made.order:
            full = self.mixture(x)
            mixture = ScalarMixture(full.logits[:, dim], full.loc[:, dim],
                                    full.log_scale[:, dim], self.family)
            x[:, dim] = solve(mixture, dim)
        return x


class AutoregressiveFlow(FlowModel):
    """``model=arflow2d``: the autoregressive mixture-CDF flow for [N, D] points."""

    def __init__(self, event_shape: tuple[int, ...], n_components: int = 16,
                 family: Family | str = Family.gaussian, hidden_features: int = 128,
                 hidden_layers: int = 2, order: list[int] | None = None):
        if len(event_shape) != 1:
            raise ConfigError(f"model=arflow2d takes points of shape [N, D]; got data of "
                              f"shape [N, {', '.join(map(str, event_shape))}]")
        n_dims = math.prod(event_shape)
        transform = AutoregressiveMixtureCDF(n_dims, n_components, family, hidden_features,
                                             hidden_layers, check_order(order, n_dims))
        super().__init__([transform], UniformBase(tuple(event_shape)))

    @torch.no_grad()
    def sample_ancestral(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """x_1 from its mixture, then each next x_i from its mixture given the ones before."""
        like = next(self.parameters())
        return self.transforms[0].sample_ancestral(n, like, generator)
