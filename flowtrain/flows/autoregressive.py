"""Autoregressive mixture-CDF flow for points: z_i = F(x_i | x_<i), base Uniform(0, 1)^D.

For D = 2 this is the seed's model: x1 through its own mixture CDF, x2 through a mixture
whose parameters a network computes from x1. A MADE gives all D conditionals in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from flowtrain.errors import ConfigError
from flowtrain.flows.causal import CausalFlow, CausalMixtureCDF, Index
from flowtrain.flows.made import MADE
from flowtrain.flows.mixture import Family


class AutoregressiveMixtureCDF(CausalMixtureCDF):
    """z_i = F_i(x_i; theta_i(x_<i)) for points, theta from a MADE."""

    def __init__(self, n_dims: int, n_components: int, family: Family | str,
                 hidden_features: int, hidden_layers: int, order: list[int] | None):
        if n_components < 1 or hidden_features < 1 or hidden_layers < 0:
            raise ConfigError(f"model.n_components ({n_components}) and model.hidden_features "
                              f"({hidden_features}) must be at least 1, model.hidden_layers "
                              f"({hidden_layers}) at least 0")
        super().__init__(n_components, family)
        self.made = MADE(n_dims, 3 * n_components, hidden_features, hidden_layers, order)
        # MADE's output unit d * 3K + p is parameter p of dimension d.
        self.start_unconditional(self.made.output, lambda initial: initial.repeat(n_dims))

    def mixture_parameters(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.made(x)

    def fill_order(self, shape: torch.Size) -> Iterator[tuple[Index, Index]]:
        for dim in self.made.order:
            yield (slice(None), dim), (slice(None),)


class AutoregressiveFlow(CausalFlow):
    """``model=arflow2d``: the autoregressive mixture-CDF flow for [N, D] points."""

    def __init__(self, event_shape: tuple[int, ...], n_components: int = 16,
                 family: Family | str = Family.gaussian, hidden_features: int = 128,
                 hidden_layers: int = 2, order: list[int] | None = None):
        if len(event_shape) != 1:
            raise ConfigError(f"model=arflow2d takes points of shape [N, D]; got data of "
                              f"shape [N, {', '.join(map(str, event_shape))}]")
        n_dims = math.prod(event_shape)
        transform = AutoregressiveMixtureCDF(n_dims, n_components, family, hidden_features,
                                             hidden_layers, order)
        super().__init__(transform, event_shape)
