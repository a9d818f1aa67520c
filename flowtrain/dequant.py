"""Dequantizers: turn a batch of data into the continuous values a flow models.

Each returns ``(y, log_det)``, where ``log_det`` is the log|det| of whatever rescaling it
applies (the 1/K of uniform dequantization, the logit preprocessing), so
``flowtrain.likelihood`` keeps the reported likelihood in the data's own units: for
discrete data, -log P(x) <= -log p(y) - log_det, and bits/dim follow from it. A learned
dequantizer also puts -log q(u | x) into ``log_det``, so the same sum is its variational
bound.

Every dequantizer is built with the data's ``levels`` (None: continuous) and
``event_shape``; ``eval_samples`` > 1 asks the evaluation for an importance-weighted
estimate over that many noise draws as well.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.errors import ConfigError
from flowtrain.flows.base import Bijection, Compose, StandardNormal, image_shape
from flowtrain.flows.coupling import AffineCoupling, ResNet, checkerboard_mask
from flowtrain.flows.flowpp import check_network_options, on_column_halves
from flowtrain.flows.flowpp_network import ContextNetwork, FlowppInit
from flowtrain.flows.reshape import ColumnHalves


class Dequantizer(nn.Module, ABC):
    """Data -> the continuous values a flow models, and back.

    ``forward(x, generator)`` returns ``(y, log_det)``: the noise (if any) is drawn from
    ``generator``, so evaluation can pass its own and leave the training RNG alone.
    ``restore(y)`` maps model-space values back to data values. ``eval_samples`` > 1 asks
    the evaluation for an importance-weighted estimate over that many noise draws too."""

    eval_samples: int = 1
    # set: the noise was Gaussian with this std, and samples take one denoising step
    denoise_sigma: float | None = None
    # set: what this dequantizer's bits/dim are not, which a training run says up front
    bits_per_dim_caveat: str | None = None

    @abstractmethod
    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        """(y, log_det): the model-space values and the log|det| of the rescaling, minus
        log q(u | x) of the noise."""

    @abstractmethod
    def restore(self, y: Tensor) -> Tensor:
        """Model-space values back into data space."""


class NoDequantization(Dequantizer):
    """Continuous data: y = x."""

    def __init__(self, levels: int | None = None, event_shape: tuple[int, ...] = ()):
        super().__init__()
        if levels is not None:
            raise ConfigError(f"this data set is discrete ({levels} levels per value): use "
                              f"dequant=uniform (or dequant=auto) so its bits/dim mean "
                              f"something")

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0])

    def restore(self, y: Tensor) -> Tensor:
        return y


class Logit(Bijection):
    """RealNVP's logit preprocessing: y' = logit(s), s = alpha + (1 - 2 alpha) y, so that
    values in [0, 1] spread over the real line; log|dy'/dy| = log(1 - 2 alpha) - log s
    - log(1 - s), written with softplus so it stays exact near 0 and 1."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        squeezed = self.alpha + (1 - 2 * self.alpha) * x
        logits = torch.log(squeezed) - torch.log1p(-squeezed)
        per_element = math.log(1 - 2 * self.alpha) + F.softplus(-logits) + F.softplus(logits)
        return logits, per_element.flatten(1).sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


def value_range(range_: list[float] | tuple[float, float], group: str) -> tuple[float, float]:
    """``dequant.range`` as (low, high), checked: the interval the data are scaled onto."""
    if len(range_) != 2 or not float(range_[0]) < float(range_[1]):
        raise ConfigError(f"{group}.range must be [low, high] with low < high; got "
                          f"{list(range_)}")
    return float(range_[0]), float(range_[1])


def needs_levels(levels: int | None, name: str) -> int:
    """The data's number of levels: a dequantizer of discrete data refuses continuous data."""
    if levels is None:
        raise ConfigError(f"dequant={name} needs discrete data (images with data.levels); "
                          f"this data set is continuous: use dequant=none (or dequant=auto)")
    return int(levels)


class UniformDequantization(Dequantizer):
    """y = low + (high - low)(x + u) / K with u ~ U[0, 1)^D (``range`` [low, high]: [0, 1]
    by default, [-1, 1] as TarFlow scales its data); then, if ``logit_alpha`` > 0, the
    logit preprocessing of RealNVP (``Logit``), which needs the range [0, 1]."""

    name = "uniform"

    def __init__(self, levels: int | None, logit_alpha: float = 0.05,
                 event_shape: tuple[int, ...] = (), eval_samples: int = 1,
                 range: list[float] | tuple[float, float] = (0.0, 1.0)):  # noqa: A002
        super().__init__()
        self.levels = needs_levels(levels, self.name)
        if not 0.0 <= logit_alpha < 0.5:
            raise ConfigError(f"dequant.logit_alpha must be in [0, 0.5); got {logit_alpha}")
        if eval_samples < 1:
            raise ConfigError(f"dequant.eval_samples must be at least 1; got {eval_samples}")
        self.low, self.high = value_range(range, "dequant")
        if logit_alpha > 0 and (self.low, self.high) != (0.0, 1.0):
            raise ConfigError(f"the logit preprocessing needs values in [0, 1]; "
                              f"dequant.range is {[self.low, self.high]}: set "
                              f"dequant.logit_alpha=0 or dequant.range=[0,1]")
        self.logit = Logit(logit_alpha) if logit_alpha > 0 else None
        self.eval_samples = int(eval_samples)

    def noise(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """u ~ U[0, 1)^D and log q(u | x) = 0."""
        u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        return u, x.new_zeros(x.shape[0])

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        x = x.float() if not x.is_floating_point() else x
        noise, log_q = self.noise(x, generator)
        scale = (self.high - self.low) / self.levels
        y = self.low + scale * (x + noise)
        log_det = x[0].numel() * math.log(scale) - log_q
        if self.logit is not None:
            y, logit_log_det = self.logit(y)
            log_det = log_det + logit_log_det
        return y, log_det

    def restore(self, y: Tensor) -> Tensor:
        """Model-space values back to data values in {0, ..., K-1}."""
        if self.logit is not None:
            y = self.logit.inverse(y)
        bins = (y - self.low) * (self.levels / (self.high - self.low))
        return torch.floor(bins).clamp(0, self.levels - 1)


class GaussianDequantization(Dequantizer):
    """TarFlow's noise for sample quality (Zhai et al. 2025; apple/ml-tarflow train.py):
    y = low + (high - low) x / (K - 1) + sigma eps, eps ~ N(0, I), so the data's K values
    span ``range`` exactly ([-1, 1] as released) and the model learns their density
    blurred by sigma. Its bits/dim are -log2 p(y) / D in units of one level of the data:
    a continuous density of noised data, not a bound on the discrete likelihood, and not
    comparable with uniform dequantization's.

    ``denoise``: samples take one score step y + sigma^2 grad log p(y) through the flow's
    own gradient (Tweedie's formula; apple/ml-tarflow sample.ipynb), before rounding."""

    name = "gaussian"

    def __init__(self, levels: int | None, sigma: float = 0.05,
                 range: list[float] | tuple[float, float] = (-1.0, 1.0),  # noqa: A002
                 denoise: bool = True, event_shape: tuple[int, ...] = ()):
        super().__init__()
        self.levels = needs_levels(levels, self.name)
        if self.levels < 2:
            raise ConfigError(f"dequant=gaussian needs at least 2 levels; got {self.levels}")
        if not sigma > 0:
            raise ConfigError(f"dequant.sigma must be positive; got {sigma}")
        self.sigma = float(sigma)
        self.low, self.high = value_range(range, "dequant")
        self.denoise_sigma = self.sigma if denoise else None
        self.bits_per_dim_caveat = (
            f"dequant=gaussian: bits/dim are of the data blurred by sigma={self.sigma:g}, "
            f"not the discrete likelihood; use dequant=uniform to compare models")

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        x = x.float() if not x.is_floating_point() else x
        scale = (self.high - self.low) / (self.levels - 1)
        eps = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        log_det = x.new_full((x.shape[0],), x[0].numel() * math.log(scale))
        return self.low + scale * x + self.sigma * eps, log_det

    def restore(self, y: Tensor) -> Tensor:
        """The nearest of the data's K values."""
        values = (y - self.low) * ((self.levels - 1) / (self.high - self.low))
        return torch.round(values).clamp(0, self.levels - 1)


class NoiseCoupling(str, Enum):
    """``dequant.coupling``: the couplings of the variational dequantizer's noise flow."""

    affine = "affine"  # affine couplings with ResNets, x through a ResNet encoder
    mixture_logistic = "mixture_logistic"  # Flow++'s as released (flowtrain.flows.flowpp)


# The released dequantizer's context network (flowpp's run_cifar.py shallow_processor):
# 3 gated convolutions.
FLOWPP_CONTEXT_BLOCKS = 3


class VariationalDequantization(UniformDequantization):
    """Flow++'s variational dequantization (Ho et al. 2019): u = sigmoid(g(eps; x)) with
    eps ~ N(0, I) and g a conditional coupling flow whose networks see features of x.
    Trained jointly with the model, whose loss is then the bound
    -log P(x) <= E_q[-log p((x + u) / K) + D log K + log q(u | x)].

    ``coupling=affine``: affine couplings with checkerboard masks, x through a ResNet
    encoder. ``coupling=mixture_logistic``: the released Flow++ dequantizer, its steps on
    column halves (``flowpp_steps``) with ``n_components``, ``heads`` and ``dropout``, x
    through its gated-convolution context network; ``init=released`` initializes both
    networks on the first batch as released."""

    name = "variational"

    def __init__(self, levels: int | None, logit_alpha: float = 0.05,
                 event_shape: tuple[int, ...] = (), eval_samples: int = 16,
                 n_couplings: int = 4, n_filters: int = 32, n_blocks: int = 1,
                 context_channels: int = 16,
                 coupling: NoiseCoupling | str = NoiseCoupling.affine,
                 n_components: int = 8, heads: int = 4, dropout: float = 0.0,
                 init: FlowppInit | str = FlowppInit.identity):
        super().__init__(levels, logit_alpha, event_shape, eval_samples)
        channels, height, width = image_shape(event_shape, "dequant=variational",
                                              "Use dequant=uniform.")
        if min(n_couplings, n_filters, context_channels) < 1 or n_blocks < 0:
            raise ConfigError("dequant.n_couplings, dequant.n_filters and "
                              "dequant.context_channels must be at least 1, dequant.n_blocks "
                              "at least 0")
        self.coupling = NoiseCoupling(coupling)
        init = FlowppInit(init)
        if self.coupling is NoiseCoupling.affine and init is not FlowppInit.identity:
            raise ConfigError("dequant.init=released is Flow++'s initialization of its "
                              "networks; it needs dequant.coupling=mixture_logistic")
        if self.coupling is NoiseCoupling.affine:
            # Not zero-initialized: the couplings see informative features from the start.
            self.encoder = ResNet(channels, context_channels, n_filters, n_blocks,
                                  zero_output=False)
            self.couplings = Compose(
                AffineCoupling(checkerboard_mask(tuple(event_shape), index % 2),
                               ResNet(channels + context_channels, 2 * channels, n_filters,
                                      n_blocks), conditional=True)
                for index in range(n_couplings))
        else:
            if width % 2:
                raise ConfigError(f"dequant.coupling=mixture_logistic splits columns in "
                                  f"pairs, so the width must be even; got {width}")
            check_network_options("dequant", n_filters, n_blocks, n_components, heads,
                                  dropout)
            self.encoder = ContextNetwork(2 * channels, context_channels,
                                          FLOWPP_CONTEXT_BLOCKS, dropout, init=init)
            network = {"n_filters": n_filters, "n_blocks": n_blocks, "heads": heads,
                       "n_components": n_components, "dropout": dropout,
                       "context_channels": context_channels, "init": init}
            self.couplings = Compose(on_column_halves((channels, height, width), n_couplings,
                                                      network))
        self.base = StandardNormal(tuple(event_shape))

    def context(self, x: Tensor) -> Tensor:
        """The features of the data x that the couplings see: x scaled to [-1, 1]
        (affine) or, as released, to [-0.5, 0.5) (mixture_logistic)."""
        if self.coupling is NoiseCoupling.affine:
            return self.encoder(2 * x / max(self.levels - 1, 1) - 1)
        column_halves, _ = ColumnHalves()(x / self.levels - 0.5)
        return self.encoder(column_halves)

    def transform_noise(self, eps: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """u = sigmoid(g(eps; x)) and log|du/deps| per example."""
        v, log_det = self.couplings(eps, self.context(x))
        sigmoid_log_det = (F.logsigmoid(v) + F.logsigmoid(-v)).flatten(1).sum(dim=1)
        return torch.sigmoid(v), log_det + sigmoid_log_det

    def noise(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        eps = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        u, log_det = self.transform_noise(eps, x)
        return u, self.base.log_prob(eps) - log_det


def auto_dequantization(levels: int | None, logit_alpha: float = 0.05,
                        event_shape: tuple[int, ...] = (), eval_samples: int = 1
                        ) -> Dequantizer:
    """``dequant=auto``: uniform dequantization for discrete data, none for continuous."""
    if levels is None:
        return NoDequantization()
    return UniformDequantization(levels, logit_alpha, event_shape, eval_samples)
