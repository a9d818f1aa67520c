"""The 1-D mixture-CDF flow: z = F(x) = sum_k pi_k CDF_k(x), base Uniform(0, 1).

Each of the D dimensions of a point gets its own mixture (a factorized density), so the
same model trains on [N] and [N, D] data; the autoregressive flows add the dependencies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowtrain.errors import ConfigError
from flowtrain.flows.base import Bijection, FlowModel, UniformBase
from flowtrain.flows.mixture import Family, ScalarMixture, initial_mixture_parameters


class MixtureCDFTransform(Bijection):
    """Elementwise z_d = F_d(x_d); log|det| = sum_d log f_d(x_d)."""

    def __init__(self, n_dims: int, n_components: int, family: Family | str):
        super().__init__()
        if n_components < 1:
            raise ConfigError(f"model.n_components must be at least 1; got {n_components}")
        self.family = Family(family)
        logits, loc, log_scale = initial_mixture_parameters(n_components)
        self.logits = nn.Parameter(logits.repeat(n_dims, 1))
        self.loc = nn.Parameter(loc.repeat(n_dims, 1))
        self.log_scale = nn.Parameter(log_scale.repeat(n_dims, 1))

    def mixture(self) -> ScalarMixture:
        return ScalarMixture(self.logits, self.loc, self.log_scale, self.family)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        flat = x.flatten(1)
        z, log_pdf = self.mixture().cdf_and_log_pdf(flat)
        return z.view_as(x), log_pdf.sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.mixture().inverse_cdf(z.flatten(1)).view_as(z)


class MixtureCDFFlow(FlowModel):
    """A mixture of ``n_components`` Gaussians or logistics per dimension, fit through its CDF."""

    def __init__(self, event_shape: tuple[int, ...], n_components: int = 8,
                 family: Family | str = Family.gaussian):
        n_dims = math.prod(event_shape)
        super().__init__([MixtureCDFTransform(n_dims, n_components, family)],
                         UniformBase(tuple(event_shape)))

    @property
    def cdf_transform(self) -> MixtureCDFTransform:
        return self.transforms[0]

    @torch.no_grad()
    def sample_ancestral(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Sample each dimension's mixture directly: component first, then the component."""
        mixture = self.cdf_transform.mixture()
        expanded = ScalarMixture(
            mixture.logits.expand(n, -1, -1), mixture.loc, mixture.log_scale, mixture.family
        )
        return expanded.sample(generator=generator).view(n, *self.event_shape)
