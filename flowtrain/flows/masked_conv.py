"""Masked convolutions for PixelCNNs: what each output may see, as a fixed mask on the kernel.

Raster order, then channel order inside a pixel (R before G before B): hidden and output
channels belong to colour group ``index % C`` and see, at their own pixel, only the colours
before theirs (type A) or up to theirs (type B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def colour_groups(n_channels: int, n_colours: int) -> Tensor:
    """Channel k belongs to colour group k % C: it may only carry colours <= its own."""
    return torch.arange(n_channels) % n_colours


def centre_connections(out_groups: Tensor, in_groups: Tensor, include_centre: bool) -> Tensor:
    """[out, in] at the centre pixel: an output of colour group g sees input groups < g
    (type A) or <= g (type B, ``include_centre``)."""
    if include_centre:
        return (out_groups[:, None] >= in_groups[None, :]).float()
    return (out_groups[:, None] > in_groups[None, :]).float()


def pixelcnn_mask(out_groups: Tensor, in_groups: Tensor, kernel_size: int,
                  include_centre: bool) -> Tensor:
    """[out, in, k, k]: rows above, pixels to the left, and the centre by colour group."""
    mask = torch.ones(len(out_groups), len(in_groups), kernel_size, kernel_size)
    centre = kernel_size // 2
    mask[:, :, centre, centre + 1:] = 0
    mask[:, :, centre + 1:, :] = 0
    mask[:, :, centre, centre] = centre_connections(out_groups, in_groups, include_centre)
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by a fixed causal mask (a buffer); the
    padding keeps the output the size of the input."""

    def __init__(self, mask: Tensor):
        out_channels, in_channels, height, width = mask.shape
        super().__init__(in_channels, out_channels, (height, width),
                         padding=(height // 2, width // 2))
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def square_masked_conv(in_channels: int, out_channels: int, kernel_size: int, n_colours: int,
                       include_centre: bool) -> MaskedConv2d:
    return MaskedConv2d(pixelcnn_mask(colour_groups(out_channels, n_colours),
                                      colour_groups(in_channels, n_colours),
                                      kernel_size, include_centre))


def vertical_mask(out_channels: int, in_channels: int, kernel_size: int,
                  include_centre_row: bool) -> Tensor:
    """[out, in, k, k]: the rows above (and the centre row): a gated PixelCNN's vertical
    stack, which sees every column of those rows, so it has no blind spot."""
    mask = torch.ones(out_channels, in_channels, kernel_size, kernel_size)
    centre = kernel_size // 2
    mask[:, :, centre + 1:, :] = 0
    if not include_centre_row:
        mask[:, :, centre, :] = 0
    return mask


def horizontal_mask(out_groups: Tensor, in_groups: Tensor, kernel_size: int,
                    include_centre: bool) -> Tensor:
    """[out, in, 1, k]: pixels to the left in the same row, and the centre by colour group
    (the centre row of the plain mask)."""
    centre = kernel_size // 2
    square = pixelcnn_mask(out_groups, in_groups, kernel_size, include_centre)
    return square[:, :, centre:centre + 1].contiguous()


class MixtureHead(nn.Module):
    """hidden features [B, F, H, W] -> [B, C, H, W, outputs_per_value] through two type-B
    1x1 layers; ``output`` is the last one, whose channel p * C + c is parameter p of
    colour c."""

    def __init__(self, n_filters: int, n_colours: int, outputs_per_value: int):
        super().__init__()
        self.n_colours = n_colours
        self.outputs_per_value = outputs_per_value
        self.hidden = square_masked_conv(n_filters, n_filters, 1, n_colours, include_centre=True)
        self.output = square_masked_conv(n_filters, outputs_per_value * n_colours, 1, n_colours,
                                         include_centre=True)

    def forward(self, hidden: Tensor) -> Tensor:
        out = self.output(F.relu(self.hidden(F.relu(hidden))))
        batch, _, height, width = out.shape
        out = out.view(batch, self.outputs_per_value, self.n_colours, height, width)
        return out.permute(0, 2, 3, 4, 1)
