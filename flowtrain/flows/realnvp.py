"""RealNVP for images (Dinh et al. 2017), shaped as in the seed and generalized to any
C x H x W with even H and W.

checkerboard couplings -> squeeze -> channel couplings -> unsqueeze -> checkerboard
couplings, ActNorm after every coupling, masks alternating; base N(0, I).
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
from flowtrain.flows.coupling import (
    AffineCoupling,
    Block,
    ResNet,
    channel_mask,
    checkerboard_mask,
)
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


class RealNVP(FlowModel):
    """``model=realnvp``. ``residual_block``: ``basic`` (two 3x3 convolutions a block) or
    ``bottleneck`` (the seed's 1x1 -> 3x3 -> 1x1)."""

    def __init__(self, event_shape: tuple[int, ...], n_filters: int = 32, n_blocks: int = 2,
                 checkerboard_in: int = 4, channelwise: int = 3, checkerboard_out: int = 3,
                 residual_block: Block | str = Block.basic):
        channels, height, width = image_shape(event_shape, "model=realnvp", FOR_POINTS)
        if height % 2 or width % 2:
            raise ConfigError(f"RealNVP needs even height and width (it squeezes 2x2 patches "
                              f"into channels); got {height}x{width}. Pad or crop the images.")
        if min(n_filters, checkerboard_in, channelwise, checkerboard_out) < 1 or n_blocks < 0:
            raise ConfigError("model.n_filters and the coupling counts must be at least 1, "
                              "model.n_blocks at least 0")
        image = (channels, height, width)
        squeezed = (4 * channels, height // 2, width // 2)
        network = {"n_filters": n_filters, "n_blocks": n_blocks, "block": Block(residual_block)}
        layers = (
            _couplings(checkerboard_mask, image, checkerboard_in, **network)
            + [Squeeze()]
            + _couplings(channel_mask, squeezed, channelwise, **network)
            + [Unsqueeze()]
            + _couplings(checkerboard_mask, image, checkerboard_out, **network)
        )
        super().__init__(layers, StandardNormal(tuple(event_shape)))
