"""Affine coupling (Dinh et al., "Density estimation using Real NVP", 2017).

One class for both of RealNVP's splits: a fixed binary mask (checkerboard or channel-wise)
says which elements condition and which are transformed, so there is no near-twin class.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from flowtrain.flows.base import Bijection


def checkerboard_mask(shape: tuple[int, int, int], parity: int) -> Tensor:
    """[1, C, H, W] mask: 1 where (row + column + parity) is even."""
    channels, height, width = shape
    rows = torch.arange(height).view(-1, 1)
    columns = torch.arange(width).view(1, -1)
    mask = ((rows + columns + parity) % 2 == 0).float()
    return mask.expand(channels, height, width).unsqueeze(0).clone()


def channel_mask(shape: tuple[int, int, int], parity: int) -> Tensor:
    """[1, C, H, W] mask: 1 on the first half of the channels (parity 0) or the second."""
    channels, height, width = shape
    first_half = (torch.arange(channels) < channels // 2).float()
    mask = first_half if parity == 0 else 1.0 - first_half
    return mask.view(1, channels, 1, 1).expand(1, channels, height, width).clone()


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    return weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size,
                                 padding=kernel_size // 2))


class ResidualBlock(nn.Module):
    def __init__(self, n_filters: int):
        super().__init__()
        # The first ReLU keeps x for the skip connection; the second may overwrite the
        # convolution's output, which its backward does not need.
        self.body = nn.Sequential(nn.ReLU(), _conv(n_filters, n_filters, 3),
                                  nn.ReLU(inplace=True), _conv(n_filters, n_filters, 3))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class BottleneckBlock(nn.Module):
    """The seed's residual block: 1x1 -> ReLU -> 3x3 -> ReLU -> 1x1, all weight-normalized
    and ``n_filters`` wide, the input added back. One 3x3 convolution instead of two: about
    0.6 of ResidualBlock's parameters and work at the same width."""

    def __init__(self, n_filters: int):
        super().__init__()
        # Both ReLUs may overwrite a convolution's output, which its backward does not need.
        self.body = nn.Sequential(_conv(n_filters, n_filters, 1), nn.ReLU(inplace=True),
                                  _conv(n_filters, n_filters, 3), nn.ReLU(inplace=True),
                                  _conv(n_filters, n_filters, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Block(str, Enum):
    """The residual block of a coupling network."""

    basic = "basic"  # ReLU -> 3x3 -> ReLU -> 3x3 (ResidualBlock)
    bottleneck = "bottleneck"  # 1x1 -> ReLU -> 3x3 -> ReLU -> 1x1, the seed's (BottleneckBlock)


_BLOCKS = {Block.basic: ResidualBlock, Block.bottleneck: BottleneckBlock}


class ResNet(nn.Module):
    """The coupling network: a weight-normalized 3x3 convolution in, residual blocks, ReLU,
    a 3x3 convolution out."""

    def __init__(self, in_channels: int, out_channels: int, n_filters: int, n_blocks: int,
                 zero_output: bool = True, block: Block | str = Block.basic):
        super().__init__()
        self.input = _conv(in_channels, n_filters, 3)
        residual_block = _BLOCKS[Block(block)]
        self.blocks = nn.Sequential(*(residual_block(n_filters) for _ in range(n_blocks)))
        self.output = nn.Conv2d(n_filters, out_channels, 3, padding=1)
        if zero_output:
            # Every coupling starts as the identity, which keeps deep flows stable.
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(F.relu(self.blocks(self.input(x)), inplace=True))


class AffineCoupling(Bijection):
    """z = m * x + (1 - m) * (x * exp(s(m * x)) + t(m * x)), with the log-scale bounded as
    s = scale * tanh(raw) + shift (learned scale and shift per channel).

    ``conditional``: the network also sees the ``context``, concatenated to m * x along
    channels (as in variational dequantization's q(u | x)), and takes C + context channels
    in; otherwise the context is ignored, like every unconditional bijection does."""

    def __init__(self, mask: Tensor, coupling_net: nn.Module, conditional: bool = False):
        super().__init__()
        self.conditional = conditional
        self.register_buffer("mask", mask)
        self.coupling_net = coupling_net
        channels = mask.shape[1]
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def _scale_and_translation(self, x_kept: Tensor, context: Tensor | None
                               ) -> tuple[Tensor, Tensor]:
        if self.conditional:
            if context is None:
                raise ValueError("a conditional coupling needs its context")
            inputs = torch.cat([x_kept, context], dim=1)
        else:
            inputs = x_kept
        # Back to the input's dtype: under bf16 autocast only the network runs in bf16,
        # never the transform or its log-det.
        raw_log_scale, translation = (self.coupling_net(inputs).to(x_kept.dtype)
                                      .chunk(2, dim=1))
        log_scale = self.scale * torch.tanh(raw_log_scale) + self.shift
        free = 1.0 - self.mask
        return log_scale * free, translation * free

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale, translation = self._scale_and_translation(x * self.mask, context)
        z = x * torch.exp(log_scale) + translation
        return z, log_scale.flatten(1).sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        log_scale, translation = self._scale_and_translation(z * self.mask, context)
        return (z - translation) * torch.exp(-log_scale)
