"""Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018).

L levels; each squeezes 2x2 patches into channels and runs K steps of
ActNorm -> invertible 1x1 convolution -> coupling (flowtrain's affine coupling with a
ResNet, or the released code's; ``flowtrain.flows.glow_coupling``). Every level but the last then
factors out half its channels under a learned conditional Gaussian prior, and the next
level works on the other half; the last level has a learned unconditional prior.

The priors are bijections to N(0, I) noise (``flowtrain.flows.multiscale``) and every
level unsqueezes back, so the whole flow maps [B, C, H, W] to [B, C, H, W] with a
N(0, I) base, and ``sample(temperature=T)`` is Glow's temperature sampling.
"""

from __future__ import annotations

import math
from enum import Enum

from flowtrain.errors import ConfigError
from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.base import (
    FOR_POINTS,
    Bijection,
    FlowModel,
    StandardNormal,
    image_shape,
)
from flowtrain.flows.conditioning import ClassPrior, TopClassPredictor, class_count
from flowtrain.flows.coupling import AffineCoupling, ResNet, channel_mask
from flowtrain.flows.glow_coupling import GlowCoupling, ReleasedGlowCoupling
from flowtrain.flows.invconv import InvertibleConv1x1
from flowtrain.flows.multiscale import LearnedPrior, OnKeptHalf, SplitPrior
from flowtrain.flows.reshape import Squeeze, Unsqueeze


class GlowNetwork(str, Enum):
    """``model.network``: the coupling network of each step."""

    resnet = "resnet"  # flowtrain's ResNet (n_blocks residual blocks), tanh-bounded scale
    released = "released"  # the released code's 3x3 -> 1x1 -> zero 3x3, sigmoid(h + 2) scale


def glow_step(shape: tuple[int, int, int], parity: int, n_filters: int,
              n_blocks: int, network: GlowNetwork, coupling: GlowCoupling
              ) -> list[Bijection]:
    """ActNorm -> invertible 1x1 convolution -> coupling on half the channels: the
    released one (always the first half conditioning the second, as released) or
    flowtrain's affine coupling with a ResNet (halves alternating with ``parity``)."""
    channels = shape[0]
    if network is GlowNetwork.released:
        coupling_layer: Bijection = ReleasedGlowCoupling(channels, n_filters, coupling)
    else:
        coupling_net = ResNet(channels, 2 * channels, n_filters, n_blocks)
        coupling_layer = AffineCoupling(channel_mask(shape, parity), coupling_net)
    return [ActNorm(channels), InvertibleConv1x1(channels), coupling_layer]


def glow_level(shape: tuple[int, int, int], levels: int, steps: int, n_filters: int,
               n_blocks: int, network: GlowNetwork, coupling: GlowCoupling,
               n_classes: int = 0, top: list[Bijection] | None = None) -> list[Bijection]:
    """Squeeze, K steps, then split with the finer ``levels - 1`` levels on the kept half
    (or, at the last level, ``top`` on the top latent, then the learned top prior and for
    a conditional model the class prior), unsqueeze."""
    channels, height, width = shape
    squeezed = (4 * channels, height // 2, width // 2)
    layers: list[Bijection] = [Squeeze()]
    for index in range(steps):
        # Alternating halves: every channel is transformed even while the 1x1
        # convolutions are still close to their initial rotation.
        layers += glow_step(squeezed, index % 2, n_filters, n_blocks, network, coupling)
    if levels == 1:
        layers += [*(top or []), LearnedPrior(squeezed)]
        layers += [ClassPrior(squeezed, n_classes)] if n_classes else []
    else:
        kept = (2 * channels, height // 2, width // 2)
        finer = glow_level(kept, levels - 1, steps, n_filters, n_blocks, network, coupling,
                           n_classes, top)
        layers += [SplitPrior(squeezed[0]), OnKeptHalf(finer)]
    return layers + [Unsqueeze()]


# The released CIFAR-10 model's levels (openai/glow, README.md: --n_level 3): the most
# that ``levels=auto`` picks.
PAPER_LEVELS = 3


def auto_levels(height: int, width: int) -> int:
    """The most levels, up to the paper's, whose squeezes divide height and width (at
    least 1: an odd side is refused with the constraint)."""
    levels = 1
    while levels < PAPER_LEVELS and height % 2 ** (levels + 1) == 0 \
            and width % 2 ** (levels + 1) == 0:
        levels += 1
    return levels


class Glow(FlowModel):
    """``model=glow``. ``levels="auto"`` (the default) fits the images: 3 levels for
    32x32 and 8x8, 2 for MNIST's 28x28; a number is used as given. ``network``: ``resnet``
    (flowtrain's coupling, ``n_blocks`` residual blocks) or ``released`` (openai/glow's,
    with ``coupling`` affine or additive). ``conditional``: p(x | class) with
    ``n_classes`` classes, through a learned mean and log-std per class on top of the
    learned top prior (``ClassPrior``; Glow's ``ycond``); ``weight_y`` > 0 adds Glow's
    class prediction from the top latent to the training loss (``TopClassPredictor``)."""

    def __init__(self, event_shape: tuple[int, ...], levels: int | str = "auto",
                 steps: int = 8, n_filters: int = 32, n_blocks: int = 1,
                 network: GlowNetwork | str = GlowNetwork.resnet,
                 coupling: GlowCoupling | str = GlowCoupling.affine,
                 conditional: bool = False, n_classes: int = 0, weight_y: float = 0.0):
        network, coupling = GlowNetwork(network), GlowCoupling(coupling)
        if network is GlowNetwork.resnet and coupling is GlowCoupling.additive:
            raise ConfigError("model.coupling=additive is the released coupling's option: "
                              "add model.network=released")
        channels, height, width = image_shape(event_shape, "model=glow", FOR_POINTS)
        n_classes = class_count(conditional, n_classes, "model=glow")
        if levels == "auto":
            levels = auto_levels(height, width)
        elif not isinstance(levels, int):
            raise ConfigError(f"model.levels must be a number or auto; got {levels!r}")
        if min(levels, steps, n_filters) < 1 or n_blocks < 0:
            raise ConfigError(f"model.levels, model.steps and model.n_filters must be at "
                              f"least 1 and model.n_blocks at least 0; got levels={levels}, "
                              f"steps={steps}, n_filters={n_filters}, n_blocks={n_blocks}")
        factor = 2**levels
        if height % factor or width % factor:
            raise ConfigError(f"Glow with model.levels={levels} squeezes {levels} times, so "
                              f"height and width must be divisible by 2**levels = {factor}; "
                              f"got {height}x{width}. Lower model.levels, or pad or crop "
                              f"the images.")
        if not (0.0 <= weight_y < math.inf) or (weight_y and not n_classes):
            raise ConfigError(f"model.weight_y weighs Glow's class prediction from the top "
                              f"latent in a class-conditional model's training loss: at "
                              f"least 0 (0.01 in the released conditional run), with "
                              f"model.conditional=true; got {weight_y}")
        top_channels = channels * 2 ** (levels + 1)
        top = ([TopClassPredictor(top_channels, n_classes, weight_y, channels * height * width)]
               if weight_y else [])
        layers = glow_level((channels, height, width), levels, steps, n_filters, n_blocks,
                            network, coupling, n_classes, top)
        super().__init__(layers, StandardNormal(tuple(event_shape)), n_classes)
        self.levels = levels
