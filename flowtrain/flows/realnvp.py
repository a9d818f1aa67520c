"""RealNVP for images (Dinh et al. 2017), generalized to any C x H x W with even H and W.

``scales=1`` (the seed's shape): checkerboard couplings -> squeeze -> channel couplings ->
unsqueeze -> checkerboard couplings. ``scales`` > 1, the paper's multi-scale model (its
Section 3.6): at every scale but the last, 3 checkerboard couplings -> squeeze -> 3
channel couplings, then half the channels are factored out (they go to the Gaussian base
as they are) and the next scale works on the other half; the last scale is 4 checkerboard
couplings. ActNorm after every coupling (in place of the paper's batch normalization),
masks alternating; every scale unsqueezes back, so the flow maps C x H x W to itself with
a N(0, I) base, and sampling and interpolation need nothing of their own.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from flowtrain.errors import ConfigError
from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.base import (
    FOR_POINTS,
    Bijection,
    FlowModel,
    StandardNormal,
    image_shape,
)
from flowtrain.flows.conditioning import ClassPrior, class_count
from flowtrain.flows.coupling import (
    AffineCoupling,
    Block,
    ResNet,
    channel_mask,
    checkerboard_mask,
)
from flowtrain.flows.multiscale import OnKeptHalf
from flowtrain.flows.reshape import Squeeze, Unsqueeze


def _couplings(make_mask: Callable[[tuple[int, int, int], int], Tensor],
               shape: tuple[int, int, int], count: int, n_filters: int,
               n_blocks: int, block: Block) -> list[Bijection]:
    """``count`` couplings with alternating masks, each followed by ActNorm."""
    channels = shape[0]
    layers: list[Bijection] = []
    for index in range(count):
        coupling_net = ResNet(channels, 2 * channels, n_filters, n_blocks, block=block)
        layers += [AffineCoupling(make_mask(shape, index % 2), coupling_net), ActNorm(channels)]
    return layers


# The paper's couplings per scale (Section 3.6): 3 checkerboard, squeeze, 3 channel-wise;
# the last scale 4 checkerboard.
PAPER_CHECKERBOARD, PAPER_CHANNELWISE, PAPER_LAST_SCALE = 3, 3, 4


def _scale(shape: tuple[int, int, int], scales: int, network: dict, n_classes: int
           ) -> list[Bijection]:
    """The paper's scale and, on the half it keeps, the ``scales - 1`` finer ones; the
    last (coarsest) ends in the class prior of a conditional model."""
    if scales == 1:
        return (_couplings(checkerboard_mask, shape, PAPER_LAST_SCALE, **network)
                + _class_prior(shape, n_classes))
    channels, height, width = shape
    squeezed = (4 * channels, height // 2, width // 2)
    kept = (2 * channels, height // 2, width // 2)
    return (_couplings(checkerboard_mask, shape, PAPER_CHECKERBOARD, **network)
            + [Squeeze()]
            + _couplings(channel_mask, squeezed, PAPER_CHANNELWISE, **network)
            + [OnKeptHalf(_scale(kept, scales - 1, network, n_classes)), Unsqueeze()])


def _class_prior(shape: tuple[int, int, int], n_classes: int) -> list[Bijection]:
    """The top latent's class-conditional prior, for a conditional model (none else)."""
    return [ClassPrior(shape, n_classes)] if n_classes else []


class RealNVP(FlowModel):
    """``model=realnvp``. ``residual_block``: ``basic`` (two 3x3 convolutions a block) or
    ``bottleneck`` (the seed's 1x1 -> 3x3 -> 1x1). ``scales``: 1 for the single-scale
    model shaped by the three coupling counts; more for the paper's multi-scale one.
    ``conditional``: p(x | class) with ``n_classes`` classes, through a learned mean and
    log-std per class of the top latent (``ClassPrior``): the whole image for one scale,
    the coarsest scale's kept half for more; the couplings do not see the class."""

    def __init__(self, event_shape: tuple[int, ...], n_filters: int = 32, n_blocks: int = 2,
                 checkerboard_in: int = 4, channelwise: int = 3, checkerboard_out: int = 3,
                 residual_block: Block | str = Block.basic, scales: int = 1,
                 conditional: bool = False, n_classes: int = 0):
        channels, height, width = image_shape(event_shape, "model=realnvp", FOR_POINTS)
        n_classes = class_count(conditional, n_classes, "model=realnvp")
        if min(n_filters, checkerboard_in, channelwise, checkerboard_out, scales) < 1 \
                or n_blocks < 0:
            raise ConfigError("model.n_filters, model.scales and the coupling counts must be "
                              "at least 1, model.n_blocks at least 0")
        side = 2 ** max(1, scales - 1)  # every scale but the last squeezes once
        if height % side or width % side:
            needs = ("even height and width" if side == 2 else
                     f"height and width divisible by {side} (model.scales={scales} squeezes "
                     f"{scales - 1} times)")
            raise ConfigError(f"RealNVP needs {needs} (it squeezes 2x2 patches into "
                              f"channels); got {height}x{width}. Pad or crop the images"
                              f"{', or lower model.scales' if scales > 2 else ''}.")
        image = (channels, height, width)
        network = {"n_filters": n_filters, "n_blocks": n_blocks, "block": Block(residual_block)}
        if scales > 1:
            if (checkerboard_in, channelwise, checkerboard_out) != (4, 3, 3):
                raise ConfigError(
                    "model.checkerboard_in, model.channelwise and model.checkerboard_out "
                    f"shape the single-scale model (model.scales=1); with model.scales="
                    f"{scales} every scale is the paper's (3 checkerboard couplings, squeeze,"
                    " 3 channel-wise; the last scale 4 checkerboard). Leave them out.")
            layers = _scale(image, scales, network, n_classes)
        else:
            squeezed = (4 * channels, height // 2, width // 2)
            layers = (
                _couplings(checkerboard_mask, image, checkerboard_in, **network)
                + [Squeeze()]
                + _couplings(channel_mask, squeezed, channelwise, **network)
                + [Unsqueeze()]
                + _couplings(checkerboard_mask, image, checkerboard_out, **network)
                + _class_prior(image, n_classes)
            )
        super().__init__(layers, StandardNormal(tuple(event_shape)), n_classes)
