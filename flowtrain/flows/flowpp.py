"""Flow++ (Ho, Chen, Srinivas, Duan & Abbeel, ICML 2019), as released
(aravindsrinivas/flowpp, flows/flows.py and flows/run_cifar.py).

Every coupling changes one half of the variables by a mixture-of-logistics CDF, a logit
and an affine map, y2 = exp(a) * logit(MixLogCDF(x2; pi, mu, s)) + b, with all of
(pi, mu, s, a, b) given by a network of the other half (``flowpp_network``); before it, a
per-position ActNorm and an invertible 1x1 convolution on each half; after it, the halves
swap. The CIFAR-10 model: 4 such steps on column halves, a space-to-depth squeeze, 2 on
channel halves, 3 on column halves, with no factoring out.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowtrain.errors import ConfigError
from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.base import (
    FOR_POINTS,
    Bijection,
    FlowModel,
    Inverse,
    StandardNormal,
    image_shape,
)
from flowtrain.flows.conditioning import ClassEmbedding, class_count
from flowtrain.flows.flowpp_network import FlowppInit, FlowppNetwork
from flowtrain.flows.invconv import DenseInvertibleConv1x1
from flowtrain.flows.mixture import Family, ScalarMixture
from flowtrain.flows.reshape import ColumnHalves, SpaceToDepth, SwapHalves

# flowpp's flows.py MixLogisticCDF: min_logscale=-7 (ScalarMixture's own floor is lower).
RELEASED_MIN_LOG_SCALE = -7.0


class MixLogisticCoupling(Bijection):
    """[x1, x2] (channel halves) -> [x1, exp(a) logit(F(x2)) + b], F a mixture of
    ``n_components`` logistics; a = tanh(.), as released. The inverse solves F by
    bisection (``ScalarMixture.inverse_logit_cdf``). ``context_channels``: the network
    also sees a context of that many channels (the variational dequantizer's).
    ``n_classes`` > 0: the context is the class labels, each turned into a learned
    vector of ``n_filters`` channels (the same at every position) that enters every block
    of the network as the dequantizer's context does. ``init``: how the network starts
    (``FlowppInit``)."""

    def __init__(self, n_channels: int, size: tuple[int, int], n_filters: int,
                 n_blocks: int, n_components: int, heads: int, dropout: float,
                 context_channels: int = 0, n_classes: int = 0, *, init: FlowppInit | str):
        super().__init__()
        self.n_kept = n_channels // 2
        self.n_components = n_components
        self.class_embedding = ClassEmbedding(n_classes, n_filters) if n_classes else None
        if n_classes:
            context_channels = n_filters
        self.conditional = context_channels > 0
        self.network = FlowppNetwork(self.n_kept, self.n_kept * (2 + 3 * n_components), size,
                                     n_filters, n_blocks, heads, dropout, context_channels,
                                     init=init)

    def _transform(self, kept: Tensor, context: Tensor | None
                   ) -> tuple[ScalarMixture, Tensor, Tensor]:
        if self.class_embedding is not None:
            context = self.class_embedding.as_map(context, kept.shape[0])
        elif self.conditional and context is None:
            raise ValueError("a conditional coupling needs its context")
        out = self.network(kept, context if self.conditional else None)
        # Back to the input's dtype: under bf16 autocast only the network runs in bf16.
        batch, _, height, width = out.shape
        out = out.to(kept.dtype).reshape(batch, self.n_kept, 2 + 3 * self.n_components,
                                         height, width).movedim(2, -1)
        log_scale, shift = torch.tanh(out[..., 0]), out[..., 1]
        logits, loc, component_log_scale = out[..., 2:].chunk(3, dim=-1)
        mixture = ScalarMixture(logits, loc, component_log_scale.clamp_min(RELEASED_MIN_LOG_SCALE),
                                Family.logistic)
        return mixture, log_scale, shift

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept, changed = x[:, :self.n_kept], x[:, self.n_kept:]
        mixture, log_scale, shift = self._transform(kept, context)
        # A transform, not a network: the CDF and its log-det stay in the input's precision.
        with torch.autocast(x.device.type, enabled=False):
            log_cdf, log_sf, log_pdf = mixture.log_cdf_sf_and_pdf(changed)
            z = (log_cdf - log_sf) * torch.exp(log_scale) + shift
            log_det = log_pdf - log_cdf - log_sf + log_scale
        return torch.cat([kept, z], dim=1), log_det.flatten(1).sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        kept, changed = z[:, :self.n_kept], z[:, self.n_kept:]
        mixture, log_scale, shift = self._transform(kept, context)
        with torch.autocast(z.device.type, enabled=False):
            x = mixture.inverse_logit_cdf((changed - shift) * torch.exp(-log_scale))
        return torch.cat([kept, x], dim=1)


class HalvesInvertibleConv(Bijection):
    """An invertible 1x1 convolution on each channel half by itself (flowpp's
    ``Pointwise`` on a tuple)."""

    def __init__(self, n_channels: int):
        super().__init__()
        self.halves = nn.ModuleList(DenseInvertibleConv1x1(n_channels // 2)
                                    for _ in range(2))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        outputs = [conv(half) for conv, half in zip(self.halves, x.chunk(2, dim=1), strict=True)]
        return (torch.cat([z for z, _ in outputs], dim=1),
                sum(log_det for _, log_det in outputs))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        halves = zip(self.halves, z.chunk(2, dim=1), strict=True)
        return torch.cat([conv.inverse(half) for conv, half in halves], dim=1)


def flowpp_steps(shape: tuple[int, int, int], count: int, network: dict) -> list[Bijection]:
    """``count`` steps on a [2C, H, W] stack of two halves: per-position ActNorm ->
    1x1 convolution per half -> mixture-logistic coupling -> swap (flowpp's
    ``Norm(), Pointwise(), MixLogisticAttnCoupling(), TupleFlip()``)."""
    channels, height, width = shape
    steps: list[Bijection] = []
    for _ in range(count):
        steps += [ActNorm(channels, size=(height, width)), HalvesInvertibleConv(channels),
                  MixLogisticCoupling(channels, (height, width), **network), SwapHalves()]
    return steps


def on_column_halves(shape: tuple[int, int, int], count: int, network: dict
                     ) -> list[Bijection]:
    """Split into even and odd columns, ``count`` steps, merge."""
    channels, height, width = shape
    return [ColumnHalves(), *flowpp_steps((2 * channels, height, width // 2), count, network),
            Inverse(ColumnHalves())]


def check_network_options(prefix: str, n_filters: int, n_blocks: int, n_components: int,
                          heads: int, dropout: float) -> None:
    """What every Flow++ coupling network needs, named under ``prefix`` (model or dequant):
    at least one block (the position embedding and any context enter through the blocks),
    heads that divide the width."""
    if min(n_filters, n_blocks, n_components, heads) < 1:
        raise ConfigError(f"{prefix}.n_filters, {prefix}.n_blocks, {prefix}.n_components and "
                          f"{prefix}.heads must be at least 1; got {n_filters}, {n_blocks}, "
                          f"{n_components} and {heads}")
    if n_filters % heads:
        raise ConfigError(f"{prefix}.n_filters={n_filters} must be divisible by {prefix}.heads"
                          f"={heads}: each attention head takes n_filters / heads channels")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{prefix}.dropout must be in [0, 1); got {dropout}")


class FlowPlusPlus(FlowModel):
    """``model=flowpp``: the released CIFAR-10 structure (flows/run_cifar.py: 4 steps on
    column halves, squeeze, 2 on channel halves, 3 on column halves), its counts settable
    (``column_in``, ``channelwise``, ``column_out``). The squeeze is undone at the end,
    which moves no density, so the base is N(0, I) over the image's own shape.
    ``conditional``: p(x | class) with ``n_classes`` classes, a learned class vector fed
    to every coupling network through its context path (the released code has no
    conditional model). ``init=released`` (default): the released data-dependent
    initialization of every network layer on the first training batch; ``identity``:
    torch's initialization with zero output convolutions, every coupling the identity at
    first."""

    def __init__(self, event_shape: tuple[int, ...], n_filters: int = 32, n_blocks: int = 2,
                 n_components: int = 8, heads: int = 4, dropout: float = 0.0,
                 column_in: int = 4, channelwise: int = 2, column_out: int = 3,
                 conditional: bool = False, n_classes: int = 0,
                 init: FlowppInit | str = FlowppInit.released):
        channels, height, width = image_shape(event_shape, "model=flowpp", FOR_POINTS)
        n_classes = class_count(conditional, n_classes, "model=flowpp")
        check_network_options("model", n_filters, n_blocks, n_components, heads, dropout)
        if min(column_in, channelwise, column_out) < 0 or column_in + channelwise \
                + column_out < 1:
            raise ConfigError(f"model.column_in, model.channelwise and model.column_out must "
                              f"be at least 0, and at least one step in all; got "
                              f"{column_in}, {channelwise} and {column_out}")
        if height % 2 or width % 4:
            raise ConfigError(f"Flow++ splits columns in pairs before and after a 2x2 squeeze, "
                              f"so the height must be even and the width divisible by 4; got "
                              f"{height}x{width}. Pad or crop the images.")
        network = {"n_filters": n_filters, "n_blocks": n_blocks, "n_components": n_components,
                   "heads": heads, "dropout": dropout, "n_classes": n_classes,
                   "init": FlowppInit(init)}
        squeezed = (4 * channels, height // 2, width // 2)
        layers = (on_column_halves((channels, height, width), column_in, network)
                  + [SpaceToDepth()]
                  + flowpp_steps(squeezed, channelwise, network)
                  + on_column_halves(squeezed, column_out, network)
                  + [Inverse(SpaceToDepth())])
        super().__init__(layers, StandardNormal(tuple(event_shape)), n_classes)
