"""PixelCNN autoregressive flow: z = F(x_i | x_<i) per pixel and channel, base Uniform(0,1)^D.

A masked PixelCNN (van den Oord et al. 2016) gives every pixel's mixture parameters in one
pass: a 7x7 type-A masked convolution (a pixel does not see itself), residual blocks of
type-B masked convolutions, 1x1 output layers. Channels are ordered inside each pixel
(R before G before B): hidden and output channels belong to colour group ``index % C``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.errors import ConfigError
from flowtrain.flows.base import FlowModel, UniformBase
from flowtrain.flows.causal import CausalMixtureCDF, Index
from flowtrain.flows.mixture import Family


def pixelcnn_mask(out_channels: int, in_channels: int, kernel_size: int, n_colours: int,
                  include_centre: bool) -> Tensor:
    """[out, in, k, k]: rows above and pixels to the left; at the centre pixel, an output of
    colour group g sees input groups < g (type A) or <= g (type B, ``include_centre``)."""
    mask = torch.ones(out_channels, in_channels, kernel_size, kernel_size)
    centre = kernel_size // 2
    mask[:, :, centre, centre + 1:] = 0
    mask[:, :, centre + 1:, :] = 0
    out_group = torch.arange(out_channels) % n_colours
    in_group = torch.arange(in_channels) % n_colours
    if include_centre:
        allowed = out_group[:, None] >= in_group[None, :]
    else:
        allowed = out_group[:, None] > in_group[None, :]
    mask[:, :, centre, centre] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by a fixed causal mask (a buffer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_colours: int,
                 include_centre: bool):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.register_buffer("mask", pixelcnn_mask(out_channels, in_channels, kernel_size,
                                                   n_colours, include_centre))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class MaskedResidualBlock(nn.Module):
    """x + f(x) with type-B masked convolutions: channel k adds to channel k, so every
    channel keeps its colour group."""

    def __init__(self, n_filters: int, n_colours: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), MaskedConv2d(n_filters, n_filters, 3, n_colours, include_centre=True),
            nn.ReLU(), MaskedConv2d(n_filters, n_filters, 1, n_colours, include_centre=True))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class PixelCNN(nn.Module):
    """x [B, C, H, W] -> [B, C, H, W, outputs_per_value], causal in raster then channel
    order."""

    def __init__(self, n_colours: int, outputs_per_value: int, n_filters: int, n_blocks: int):
        super().__init__()
        self.n_colours = n_colours
        self.outputs_per_value = outputs_per_value
        self.input = MaskedConv2d(n_colours, n_filters, 7, n_colours, include_centre=False)
        self.blocks = nn.Sequential(*(MaskedResidualBlock(n_filters, n_colours)
                                      for _ in range(n_blocks)))
        self.hidden = MaskedConv2d(n_filters, n_filters, 1, n_colours, include_centre=True)
        # Output channel p * C + c holds parameter p of colour c (colour group c).
        self.output = MaskedConv2d(n_filters, outputs_per_value * n_colours, 1, n_colours,
                                   include_centre=True)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.blocks(self.input(x))
        out = self.output(F.relu(self.hidden(F.relu(hidden))))
        batch, _, height, width = out.shape
        out = out.view(batch, self.outputs_per_value, self.n_colours, height, width)
        return out.permute(0, 2, 3, 4, 1)


class PixelCNNMixtureCDF(CausalMixtureCDF):
    """z = F(x_i; theta_i(x_<i)) for every value of an image, theta from a masked PixelCNN."""

    def __init__(self, n_colours: int, n_components: int, family: Family | str,
                 n_filters: int, n_blocks: int):
        super().__init__(n_components, family)
        self.net = PixelCNN(n_colours, 3 * n_components, n_filters, n_blocks)
        # The PixelCNN's output channel p * C + c is parameter p of colour c.
        self.start_unconditional(self.net.output,
                                 lambda initial: initial.repeat_interleave(n_colours))

    def mixture_parameters(self, x: Tensor) -> Tensor:
        return self.net(x)

    def fill_order(self, shape: torch.Size) -> Iterator[tuple[Index, Index]]:
        """Raster order, then channel order; the network sees rows 0..i only: masked
        convolutions never look below the current row, so the rows under it cannot change
        its parameters (and skipping them halves the work on average)."""
        _, channels, height, width = shape
        for i in range(height):
            for j in range(width):
                for c in range(channels):
                    yield (slice(None), c, i, j), (slice(None), slice(None), slice(0, i + 1))


class PixelCNNFlow(FlowModel):
    """``model=pixelcnn_arflow``."""

    def __init__(self, event_shape: tuple[int, ...], n_components: int = 8,
                 family: Family | str = Family.logistic, n_filters: int = 32,
                 n_blocks: int = 3):
        if len(event_shape) != 3:
            raise ConfigError(f"model=pixelcnn_arflow takes images [N, C, H, W]; got data of "
                              f"shape [N, {', '.join(map(str, event_shape))}]")
        if n_components < 1 or n_filters < event_shape[0] or n_blocks < 0:
            # With fewer filters than colours some colour group has no hidden channel, and
            # the colours after it would silently lose sight of their own pixel.
            raise ConfigError(f"model.n_components ({n_components}) must be at least 1, "
                              f"model.n_filters ({n_filters}) at least the number of channels "
                              f"({event_shape[0]}), model.n_blocks ({n_blocks}) at least 0")
        transform = PixelCNNMixtureCDF(event_shape[0], n_components, family, n_filters,
                                       n_blocks)
        super().__init__([transform], UniformBase(tuple(event_shape)))

    @torch.no_grad()
    def sample_ancestral(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        return self.transforms[0].sample_ancestral((n, *self.event_shape),
                                                   next(self.parameters()), generator)
