"""PixelCNN autoregressive flow: z = F(x_i | x_<i) per pixel and channel, base Uniform(0,1)^D.

A PixelCNN (van den Oord et al. 2016) gives every pixel's mixture parameters in one pass:
a 7x7 type-A masked convolution (a pixel does not see itself), residual blocks of type-B
masked convolutions, 1x1 output layers. ``network=gated`` (the default) splits them into
gated vertical and horizontal stacks, so nothing before a pixel is hidden from it;
``network=plain`` is the original masked stack. Channels are ordered inside each pixel
(R before G before B).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum

import torch
from torch import Tensor, nn

from flowtrain.errors import ConfigError
from flowtrain.flows.base import image_shape
from flowtrain.flows.causal import CausalFlow, CausalMixtureCDF, Index
from flowtrain.flows.conditioning import class_count, class_embeddings
from flowtrain.flows.gated_pixelcnn import GatedPixelCNN
from flowtrain.flows.masked_conv import MixtureHead, square_masked_conv
from flowtrain.flows.mixture import Family


class MaskedResidualBlock(nn.Module):
    """x + f(x) with type-B masked convolutions: channel k adds to channel k, so every
    channel keeps its colour group."""

    def __init__(self, n_filters: int, n_colours: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), square_masked_conv(n_filters, n_filters, 3, n_colours, include_centre=True),
            nn.ReLU(), square_masked_conv(n_filters, n_filters, 1, n_colours, include_centre=True))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class PixelCNN(nn.Module):
    """The plain masked PixelCNN: x [B, C, H, W] -> [B, C, H, W, outputs_per_value], causal
    in raster then channel order. Stacked masked kernels leave a blind spot up and to the
    right of each pixel that no depth removes; ``GatedPixelCNN`` has none. ``n_classes``
    > 0: a learned class bias added to the features in front of every layer."""

    def __init__(self, n_colours: int, outputs_per_value: int, n_filters: int, n_blocks: int,
                 input_kernel: int = 7, n_classes: int = 0):
        super().__init__()
        # How far a pixel's outputs reach, up and to either side: the input kernel's
        # half-width, and one more per 3x3 block.
        self.reach = input_kernel // 2 + n_blocks
        self.input = square_masked_conv(n_colours, n_filters, input_kernel, n_colours,
                                        include_centre=False)
        self.blocks = nn.Sequential(*(MaskedResidualBlock(n_filters, n_colours)
                                      for _ in range(n_blocks)))
        self.class_biases = class_embeddings(n_classes, n_filters, n_blocks + 1)
        self.head = MixtureHead(n_filters, n_colours, outputs_per_value)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        features = self.input(x)
        for index, layer in enumerate([*self.blocks, self.head]):
            if self.class_biases is not None:
                features = features + self.class_biases[index].as_map(context, x.shape[0])
            features = layer(features)
        return features


class Network(str, Enum):
    """``model.network``: which causal network gives the mixture parameters."""

    gated = "gated"
    plain = "plain"


NETWORKS = {Network.gated: GatedPixelCNN, Network.plain: PixelCNN}


class PixelCNNMixtureCDF(CausalMixtureCDF):
    """z = F(x_i; theta_i(x_<i)) for every value of an image, theta from a PixelCNN."""

    def __init__(self, n_colours: int, n_components: int, family: Family | str,
                 n_filters: int, n_blocks: int, network: Network | str = Network.gated,
                 n_classes: int = 0):
        super().__init__(n_components, family)
        self.net = NETWORKS[Network(network)](n_colours, 3 * n_components, n_filters, n_blocks,
                                              n_classes=n_classes)
        # The head's output channel p * C + c is parameter p of colour c.
        self.start_unconditional(self.net.head.output,
                                 lambda initial: initial.repeat_interleave(n_colours))

    def mixture_parameters(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x, context)

    def fill_order(self, shape: torch.Size) -> Iterator[tuple[Index, Index]]:
        """Raster order, then channel order. The network sees only the window its output
        at (i, j) can depend on: ``reach`` rows above and ``reach`` columns either side
        (neither network looks below the current row). On 32x32 with the default 3 blocks
        that is 7 x 13 pixels a pass instead of 16 x 32 on average."""
        _, channels, height, width = shape
        reach = self.net.reach
        for i in range(height):
            rows = slice(max(0, i - reach), i + 1)
            for j in range(width):
                columns = slice(max(0, j - reach), min(width, j + reach + 1))
                for c in range(channels):
                    yield (slice(None), c, i, j), (slice(None), slice(None), rows, columns)


class PixelCNNFlow(CausalFlow):
    """``model=pixelcnn_arflow``. ``conditional``: p(x | class) with ``n_classes``
    classes, a learned class term in every layer of the network (gated: inside the
    gates, as the conditional PixelCNN; plain: added to each layer's input)."""

    def __init__(self, event_shape: tuple[int, ...], n_components: int = 8,
                 family: Family | str = Family.logistic, n_filters: int = 32,
                 n_blocks: int = 3, network: Network | str = Network.gated,
                 conditional: bool = False, n_classes: int = 0):
        channels, _, _ = image_shape(event_shape, "model=pixelcnn_arflow")
        n_classes = class_count(conditional, n_classes, "model=pixelcnn_arflow")
        if n_components < 1 or n_filters < channels or n_blocks < 0:
            # With fewer filters than colours some colour group has no hidden channel, and
            # the colours after it would silently lose sight of their own pixel.
            raise ConfigError(f"model.n_components ({n_components}) must be at least 1, "
                              f"model.n_filters ({n_filters}) at least the number of channels "
                              f"({channels}), model.n_blocks ({n_blocks}) at least 0")
        transform = PixelCNNMixtureCDF(channels, n_components, family, n_filters,
                                       n_blocks, network, n_classes)
        super().__init__(transform, event_shape, n_classes)
