"""The mixture-CDF transform that every autoregressive flow shares, whatever its conditioner.

z_i = F(x_i; theta_i(x_<i)) for every value of x, with theta from a causal network (MADE for
points, a masked PixelCNN for images); log|det| = sum_i log f(x_i | x_<i), since the
Jacobian is triangular in the network's order. Inverting or sampling fills the values one
at a time in that order, one network pass each, the whole batch at once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from flowtrain.flows.base import Bijection, FlowModel, UniformBase
from flowtrain.flows.mixture import (
    Family,
    ScalarMixture,
    bounded_log_scale,
    initial_mixture_parameters,
)

Index = tuple[slice | int, ...]


class CausalMixtureCDF(Bijection):
    """Subclasses give the conditioner's output for x, [*x.shape, 3K], and the fill order."""

    def __init__(self, n_components: int, family: Family | str):
        super().__init__()
        self.n_components = n_components
        self.family = Family(family)

    @abstractmethod
    def mixture_parameters(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """[*x.shape, 3K]: logits, locations and raw log-scales; value i sees only x_<i
        (and the context, for a conditional network)."""

    @abstractmethod
    def fill_order(self, shape: torch.Size) -> Iterator[tuple[Index, Index]]:
        """(where the next value goes, the part of x its parameters need) in causal order.
        The part is a slice per leading dimension; given only that part, the conditioner
        must give the value the same parameters as given all of x."""

    def start_unconditional(self, output_layer: nn.Module,
                            layout: Callable[[Tensor], Tensor]) -> None:
        """Zero the conditioner's output weights and put one mixture's parameters (laid out
        by ``layout`` over the output units) in its bias: every value starts as the same
        unconditional mixture, like the 1-D flow."""
        nn.init.zeros_(output_layer.weight)
        with torch.no_grad():
            output_layer.bias.copy_(
                layout(torch.cat(initial_mixture_parameters(self.n_components))))

    def mixture(self, x: Tensor, context: Tensor | None = None) -> ScalarMixture:
        # float32 (or the input's dtype): under bf16 autocast only the network runs in bf16.
        parameters = self.mixture_parameters(x, context).to(x.dtype)
        logits, loc, raw_log_scale = parameters.split(self.n_components, -1)
        return ScalarMixture(logits, loc, bounded_log_scale(raw_log_scale), self.family)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_pdf = self.mixture(x, context).cdf_and_log_pdf(x)
        return z, log_pdf.flatten(1).sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self._fill(torch.zeros_like(z), lambda mixture, at: mixture.inverse_cdf(z[at]),
                          context)

    def sample_ancestral(self, shape: tuple[int, ...], like: Tensor,
                         generator: torch.Generator | None,
                         context: Tensor | None = None) -> Tensor:
        """Each value from its mixture given the ones before it (component, then value)."""
        return self._fill(like.new_zeros(shape),
                          lambda mixture, at: mixture.sample(generator=generator), context)

    @torch.no_grad()
    def _fill(self, x: Tensor, solve: Callable[[ScalarMixture, Index], Tensor],
              context: Tensor | None) -> Tensor:
        for at, visible in self.fill_order(x.shape):
            part = self.mixture(x[visible], context)
            inside = within(at, visible)
            x[at] = solve(ScalarMixture(part.logits[inside], part.loc[inside],
                                        part.log_scale[inside], self.family), at)
        return x


def within(at: Index, visible: Index) -> Index:
    """The index ``at`` of x, counted inside the part ``x[visible]``."""
    parts = (*visible, *[slice(None)] * (len(at) - len(visible)))
    return tuple(position - (part.start or 0) if isinstance(position, int) else position
                 for position, part in zip(at, parts, strict=True))


class CausalFlow(FlowModel):
    """One causal mixture-CDF transform on a Uniform(0, 1)^D base: the autoregressive flows
    for points and for images."""

    def __init__(self, transform: CausalMixtureCDF, event_shape: tuple[int, ...],
                 n_classes: int = 0):
        super().__init__([transform], UniformBase(tuple(event_shape)), n_classes)

    @torch.no_grad()
    def sample_ancestral(self, n: int, *, generator: torch.Generator | None = None,
                         context: Tensor | None = None) -> Tensor:
        """x_1 from its mixture, then each next value from its mixture given the ones
        before (what ``sample`` draws, without inverting the CDFs)."""
        return self.transforms[0].sample_ancestral((n, *self.event_shape),
                                                   next(self.parameters()), generator, context)
