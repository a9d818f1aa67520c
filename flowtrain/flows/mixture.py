"""Scalar mixtures of location-scale components: log pdf, CDF, inverse CDF and sampling.

Shared by every mixture-CDF flow (1-D, 2-D autoregressive, PixelCNN): parameters carry the
K components in their last dimension and broadcast against x over all other dimensions.
Written out rather than through ``torch.distributions.MixtureSameFamily`` because the flows
need the CDF of the logistic family, a bisection inverse, and sampling from a given
``torch.Generator`` for reproducible runs, none of which it offers together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

from flowtrain.errors import NonFiniteError
from flowtrain.flows.base import HALF_LOG_2PI


class Family(str, Enum):
    """The component distribution of a mixture."""

    gaussian = "gaussian"
    logistic = "logistic"


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
# The bisection bracket: this many component scales beyond the outermost locations, where
# the mixture CDF is within 1e-13 of 0 or 1 for both families (logistic: sigmoid(-30)).
_TAIL_SCALES = 30.0
# Components narrower than exp(-9) ~ 1e-4 of the data's scale are not allowed: without a
# floor, a component that collapses onto a repeated value drives the NLL to -inf, then NaN.
MIN_LOG_SCALE = -9.0


def _component_log_pdf(u: Tensor, family: Family) -> Tensor:
    """log pdf of the standardized component at u = (x - loc) / scale."""
    if family is Family.gaussian:
        return -0.5 * u.square() - HALF_LOG_2PI
    return -u - 2.0 * F.softplus(-u)


def normal_cdf(u: Tensor) -> Tensor:
    """Phi(u) through erfc, which keeps the lower tail (ndtr rounds it to 0 below about
    -8 in float64 and -6 in float32)."""
    return 0.5 * torch.special.erfc(-u * _INV_SQRT2)


def _component_cdf(u: Tensor, family: Family) -> Tensor:
    if family is Family.gaussian:
        return normal_cdf(u)
    return torch.sigmoid(u)


def _component_log_cdf(u: Tensor, family: Family) -> Tensor:
    """log F(u) of the standardized component, exact far into the lower tail."""
    if family is Family.gaussian:
        return torch.special.log_ndtr(u)
    return -F.softplus(-u)


def _component_sample(shape: torch.Size, family: Family, like: Tensor,
                      generator: torch.Generator | None) -> Tensor:
    if family is Family.gaussian:
        return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)
    uniform = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return torch.logit(uniform.clamp_min(torch.finfo(like.dtype).tiny))


# Network-given log-scales are squashed into (-bound, bound) by bound * tanh(raw / bound):
# a free output can overflow exp() or collapse a component onto a point.
LOG_SCALE_BOUND = 7.0


def bounded_log_scale(raw: Tensor) -> Tensor:
    return LOG_SCALE_BOUND * torch.tanh(raw / LOG_SCALE_BOUND)


def initial_mixture_parameters(n_components: int) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, locations and log-scales every mixture flow starts from: equal weights,
    locations spread over the range of standardized data, scales of 0.5."""
    spread = torch.linspace(-2.0, 2.0, n_components) if n_components > 1 else torch.zeros(1)
    return (torch.zeros(n_components), spread,
            torch.full((n_components,), math.log(0.5)))


def _weighted_cdf(weights: Tensor, u: Tensor, family: Family) -> Tensor:
    # Softmax weights can sum to 1 + 1 ulp: clamp so z never leaves [0, 1], where the
    # uniform base would give -inf to a point whose density is finite.
    return (weights * _component_cdf(u, family)).sum(dim=-1).clamp(0.0, 1.0)


@dataclass
class ScalarMixture:
    """p(x) = sum_k softmax(logits)_k * (1/s_k) g((x - loc_k) / s_k), g Gaussian or logistic."""

    logits: Tensor
    loc: Tensor
    log_scale: Tensor
    family: Family

    def __post_init__(self) -> None:
        self.family = Family(self.family)
        self.log_scale = self.log_scale.clamp_min(MIN_LOG_SCALE)

    def _standardize(self, x: Tensor) -> Tensor:
        return (x.unsqueeze(-1) - self.loc) * torch.exp(-self.log_scale)

    def log_pdf(self, x: Tensor) -> Tensor:
        """log p(x) by logsumexp over components, so far tails stay finite."""
        u = self._standardize(x)
        log_weights = torch.log_softmax(self.logits, dim=-1)
        per_component = _component_log_pdf(u, self.family) - self.log_scale
        return torch.logsumexp(log_weights + per_component, dim=-1)

    def cdf(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.logits, dim=-1)
        return _weighted_cdf(weights, self._standardize(x), self.family)

    def cdf_and_log_pdf(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """F(x) and log f(x) from one standardization."""
        u = self._standardize(x)
        log_weights = torch.log_softmax(self.logits, dim=-1)
        cdf = _weighted_cdf(log_weights.exp(), u, self.family)
        per_component = _component_log_pdf(u, self.family) - self.log_scale
        return cdf, torch.logsumexp(log_weights + per_component, dim=-1)

    def log_cdf_sf_and_pdf(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log F(x), log(1 - F(x)) and log f(x) from one standardization, each by
        logsumexp over components: logit F = log F - log(1 - F) stays exact where F
        itself rounds to 0 or 1 (Flow++'s coupling takes the logit of the CDF)."""
        u = self._standardize(x)
        log_weights = torch.log_softmax(self.logits, dim=-1)
        log_cdf, log_sf = self._log_cdf_and_sf(u, log_weights)
        per_component = _component_log_pdf(u, self.family) - self.log_scale
        return log_cdf, log_sf, torch.logsumexp(log_weights + per_component, dim=-1)

    def _log_cdf_and_sf(self, u: Tensor, log_weights: Tensor) -> tuple[Tensor, Tensor]:
        log_cdf = torch.logsumexp(log_weights + _component_log_cdf(u, self.family), dim=-1)
        # both families are symmetric: 1 - F(u) = F(-u)
        log_sf = torch.logsumexp(log_weights + _component_log_cdf(-u, self.family), dim=-1)
        return log_cdf, log_sf

    @torch.no_grad()
    def inverse_cdf(self, z: Tensor, tol: float = 1e-6, max_iter: int = 200) -> Tensor:
        """x with F(x) = z, by bisection on a bracket wide enough to hold every component.

        ``tol`` is in units of the narrowest component's scale (so z is accurate to about
        tol too, however sharp the density)."""
        tiny = torch.finfo(z.dtype).eps
        z = z.clamp(tiny, 1.0 - tiny)  # F(x) = 0 or 1 exactly has no finite solution
        return self._bisect(lambda x: self.cdf(x) < z, torch.zeros_like(z), tol, max_iter)

    @torch.no_grad()
    def inverse_logit_cdf(self, y: Tensor, tol: float = 1e-6, max_iter: int = 200) -> Tensor:
        """x with logit F(x) = y, for any real y: the bracket widens with |y|, since the
        logit of a logistic or Gaussian mixture's CDF grows at least as fast as x over the
        widest component's scale."""
        log_weights = torch.log_softmax(self.logits, dim=-1)

        def below(x: Tensor) -> Tensor:  # no log-density: only the logit is compared
            log_cdf, log_sf = self._log_cdf_and_sf(self._standardize(x), log_weights)
            return log_cdf - log_sf < y
        return self._bisect(below, y.abs(), tol, max_iter)

    def _bisect(self, below: Callable[[Tensor], Tensor], extra_scales: Tensor, tol: float,
                max_iter: int) -> Tensor:
        """The x where ``below(x)`` turns false, bracketed by the outermost components
        plus ``_TAIL_SCALES + extra_scales`` of their scales. All elements are bisected
        together for a fixed number of halvings, computed once from the widest bracket,
        so there is no per-iteration host sync."""
        scale = self.log_scale.exp()
        reach = (_TAIL_SCALES + extra_scales).unsqueeze(-1) * scale
        lower = (self.loc - reach).amin(dim=-1).expand_as(extra_scales).clone()
        upper = (self.loc + reach).amax(dim=-1).expand_as(extra_scales).clone()
        width, narrowest = torch.stack([(upper - lower).max(), scale.min()]).tolist()
        if not math.isfinite(width):
            raise NonFiniteError("mixture parameters are not finite; cannot invert the CDF")
        step = tol * min(1.0, narrowest)
        n_iter = min(max_iter, max(1, math.ceil(math.log2(max(width, step) / step))))
        for _ in range(n_iter):
            middle = 0.5 * (lower + upper)
            is_below = below(middle)
            lower = torch.where(is_below, middle, lower)
            upper = torch.where(is_below, upper, middle)
        return 0.5 * (lower + upper)

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling: pick a component from the logits, then sample it."""
        batch_shape = self.logits.shape[:-1]
        flat_logits = self.logits.reshape(-1, self.logits.shape[-1])
        choice = torch.multinomial(torch.softmax(flat_logits, dim=-1), 1, generator=generator)
        choice = choice.reshape(*batch_shape, 1)
        loc = self.loc.expand_as(self.logits).gather(-1, choice).squeeze(-1)
        log_scale = self.log_scale.expand_as(self.logits).gather(-1, choice).squeeze(-1)
        noise = _component_sample(batch_shape, self.family, loc, generator)
        return loc + log_scale.exp() * noise
