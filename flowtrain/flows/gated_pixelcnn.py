"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): two stacks instead of one masked stack, so no pixel before i is out of sight.

The vertical stack sees whole rows above the pixel; the horizontal stack sees the pixels
to its left in its row (and, at the pixel itself, the colours before) plus the vertical
stack. A plain masked stack loses the region up and to the right of each pixel (the blind
spot); these two cover everything before it once the receptive field reaches it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowtrain.flows.conditioning import class_embeddings
from flowtrain.flows.masked_conv import (
    MaskedConv2d,
    MixtureHead,
    colour_groups,
    horizontal_mask,
    square_masked_conv,
    vertical_mask,
)


def gate(features: Tensor) -> Tensor:
    """tanh(a) * sigmoid(b) for the two halves of the channels."""
    value, gate_logits = features.chunk(2, dim=1)
    return torch.tanh(value) * torch.sigmoid(gate_logits)


class GatedBlock(nn.Module):
    """One gated layer of both stacks; the horizontal one is residual.

    The 2F pre-gate channels are two copies of the F colour groups, so value k and gate k
    share channel k's colour group and the gated output keeps it.
    """

    def __init__(self, n_filters: int, n_colours: int, kernel_size: int = 3):
        super().__init__()
        groups = colour_groups(n_filters, n_colours)
        doubled = torch.cat([groups, groups])
        self.vertical = MaskedConv2d(vertical_mask(2 * n_filters, n_filters, kernel_size,
                                                   include_centre_row=True))
        self.horizontal = MaskedConv2d(horizontal_mask(doubled, groups, kernel_size,
                                                       include_centre=True))
        # Vertical features at row i only carry rows above i, so any colour may use them.
        self.vertical_to_horizontal = nn.Conv2d(2 * n_filters, 2 * n_filters, 1)
        self.horizontal_out = square_masked_conv(n_filters, n_filters, 1, n_colours,
                                                 include_centre=True)

    def forward(self, vertical: Tensor, horizontal: Tensor, class_bias: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """``class_bias`` [B, 4F, 1, 1]: the conditional PixelCNN's V^T h, the class's
        term inside both stacks' gates (vertical's 2F channels, then horizontal's)."""
        vertical_features = self.vertical(vertical)
        horizontal_features = (self.horizontal(horizontal)
                               + self.vertical_to_horizontal(vertical_features))
        if class_bias is not None:
            vertical_bias, horizontal_bias = class_bias.chunk(2, dim=1)
            vertical_features = vertical_features + vertical_bias
            horizontal_features = horizontal_features + horizontal_bias
        return (gate(vertical_features),
                horizontal + self.horizontal_out(gate(horizontal_features)))


class GatedPixelCNN(nn.Module):
    """x [B, C, H, W] -> [B, C, H, W, outputs_per_value], causal in raster then channel
    order, with the same constructor and head as ``PixelCNN``. ``n_classes`` > 0: the
    conditional PixelCNN (the paper's Section 2.3), a learned class term added inside
    every gated layer's gates; the labels come as ``context``."""

    def __init__(self, n_colours: int, outputs_per_value: int, n_filters: int, n_blocks: int,
                 input_kernel: int = 7, n_classes: int = 0):
        super().__init__()
        # How far a pixel's outputs reach, up and to either side (the vertical stack widens
        # by one column and one row per 3x3 block): what the sampler shows the network.
        self.reach = input_kernel // 2 + n_blocks
        # The 7x7 type-A input split in two: the rows strictly above, and the pixels
        # strictly to the left with the earlier colours of this pixel.
        self.input_vertical = MaskedConv2d(vertical_mask(n_filters, n_colours, input_kernel,
                                                         include_centre_row=False))
        self.input_horizontal = MaskedConv2d(horizontal_mask(
            colour_groups(n_filters, n_colours), colour_groups(n_colours, n_colours),
            input_kernel, include_centre=False))
        self.blocks = nn.ModuleList(GatedBlock(n_filters, n_colours) for _ in range(n_blocks))
        self.class_biases = class_embeddings(n_classes, 4 * n_filters, n_blocks)
        self.head = MixtureHead(n_filters, n_colours, outputs_per_value)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        vertical = self.input_vertical(x)
        # Rows above are already in the horizontal stack, so even n_blocks=0 sees them.
        horizontal = self.input_horizontal(x) + vertical
        for index, block in enumerate(self.blocks):
            class_bias = (None if self.class_biases is None
                          else self.class_biases[index].as_map(context, x.shape[0]))
            vertical, horizontal = block(vertical, horizontal, class_bias)
        return self.head(horizontal)
