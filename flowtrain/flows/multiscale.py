"""Multi-scale pieces (Dinh et al. 2017; Kingma & Dhariwal, "Glow", 2018): at the end of a
scale half the channels are factored out under a learned Gaussian prior, and the finer
scales act on the other half.

The priors are written as bijections to standard-normal noise,
eps = (z - mu) * exp(-log_sigma), with log|det| = -sum(log_sigma). A model built from them
keeps a N(0, I) base, and sampling at temperature T gives z = mu + sigma * T * eps:
Glow's temperature sampling, through the ordinary ``FlowModel.sample``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from flowtrain.flows.base import Bijection, Compose
from flowtrain.flows.mixture import bounded_log_scale


def standardize(z: Tensor, mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
    """eps = (z - mean) exp(-log_std) and its log|det| = -sum(log_std) per example."""
    log_std = log_std.expand_as(z)
    return (z - mean) * torch.exp(-log_std), -log_std.flatten(1).sum(dim=1)


def unstandardize(eps: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """z = mean + exp(log_std) eps, the inverse of ``standardize``."""
    return mean + torch.exp(log_std) * eps


class SplitPrior(Bijection):
    """[z1, z2] -> [z1, (z2 - mu(z1)) exp(-log_sigma(z1))]: z2 factored out under its
    conditional prior N(mu(z1), sigma(z1)^2), given by a zero-initialized 3x3 convolution
    of the kept half z1 (Glow's split), so it starts as N(0, I)."""

    def __init__(self, n_channels: int):
        super().__init__()
        self.n_kept = n_channels // 2
        n_factored = n_channels - self.n_kept
        self.prior_net = nn.Conv2d(self.n_kept, 2 * n_factored, 3, padding=1)
        nn.init.zeros_(self.prior_net.weight)
        nn.init.zeros_(self.prior_net.bias)

    def prior(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of the factored-out half given the kept half."""
        # Back to the input's dtype: under bf16 autocast only the network runs in bf16.
        mean, raw_log_std = self.prior_net(kept).to(kept.dtype).chunk(2, dim=1)
        return mean, bounded_log_scale(raw_log_std)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept, factored = x[:, :self.n_kept], x[:, self.n_kept:]
        eps, log_det = standardize(factored, *self.prior(kept))
        return torch.cat([kept, eps], dim=1), log_det

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        kept, eps = z[:, :self.n_kept], z[:, self.n_kept:]
        return torch.cat([kept, unstandardize(eps, *self.prior(kept))], dim=1)


class GaussianPrior(Bijection, ABC):
    """z -> (z - mu) exp(-log_sigma) for a prior N(mu, sigma^2) over the whole input,
    given by ``prior``: the top-scale priors, learned (``LearnedPrior``) or per class
    (``flowtrain.flows.conditioning.ClassPrior``)."""

    @abstractmethod
    def prior(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """(mean, log_std), each broadcastable to z."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return standardize(x, *self.prior(x, context))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return unstandardize(z, *self.prior(z, context))


class LearnedPrior(GaussianPrior):
    """A learned mean and log-std per element, zero at initialization: Glow's learned
    prior at the top scale."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, *shape))
        self.raw_log_std = nn.Parameter(torch.zeros(1, *shape))

    def prior(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.mean, bounded_log_scale(self.raw_log_std)


class OnKeptHalf(Bijection):
    """The finer scales: ``transforms`` in order on the first half of the channels (the
    half a ``SplitPrior`` kept); the factored-out half passes through unchanged."""

    def __init__(self, transforms: list[Bijection]):
        super().__init__()
        self.transforms = Compose(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n_kept = x.shape[1] // 2
        kept, factored = x[:, :n_kept], x[:, n_kept:]
        kept, log_det = self.transforms(kept, context)
        return torch.cat([kept, factored], dim=1), log_det

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        n_kept = z.shape[1] // 2
        kept, factored = z[:, :n_kept], z[:, n_kept:]
        return torch.cat([self.transforms.inverse(kept, context), factored], dim=1)
