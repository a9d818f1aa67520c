"""Volume-preserving reshapes between the scales of a multi-scale flow."""

from __future__ import annotations

import torch
from torch import Tensor

from flowtrain.flows.base import Bijection


def squeeze(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]: each 2x2 patch becomes 4 channels."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(batch, 4 * channels, height // 2, width // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """The inverse of ``squeeze``."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels // 4, 2, 2, height, width)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels // 4, 2 * height, 2 * width)


class Squeeze(Bijection):
    volume_preserving = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return unsqueeze(z)


class Unsqueeze(Bijection):
    volume_preserving = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return unsqueeze(x), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return squeeze(z)


class SpaceToDepth(Bijection):
    """[B, C, H, W] -> [B, 4C, H/2, W/2] in TensorFlow's ``space_to_depth`` order, which
    Flow++'s released model squeezes with: output channel (2 dy + dx) C + c, so the
    first half of the channels is the top row of every 2x2 patch (``squeeze`` puts a
    colour's four values together instead)."""

    volume_preserving = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, channels, height, width = x.shape
        x = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
        z = x.permute(0, 3, 5, 1, 2, 4).reshape(batch, 4 * channels, height // 2, width // 2)
        return z, x.new_zeros(batch)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        batch, channels, height, width = z.shape
        z = z.reshape(batch, 2, 2, channels // 4, height, width)
        return z.permute(0, 3, 4, 1, 5, 2).reshape(batch, channels // 4, 2 * height, 2 * width)


class ColumnHalves(Bijection):
    """[B, C, H, W] -> [B, 2C, H, W/2]: the even columns, then the odd ones, as two halves
    of the channels. Flow++'s released ``CheckerboardSplit`` is this split (it pairs
    columns, not the squares of a checkerboard), and its couplings then see a half as a
    compact H x W/2 image."""

    volume_preserving = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, channels, height, width = x.shape
        x = x.reshape(batch, channels, height, width // 2, 2)
        z = x.permute(0, 4, 1, 2, 3).reshape(batch, 2 * channels, height, width // 2)
        return z, x.new_zeros(batch)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        batch, channels, height, width = z.shape
        z = z.reshape(batch, 2, channels // 2, height, width)
        return z.permute(0, 2, 3, 4, 1).reshape(batch, channels // 2, height, 2 * width)


class SwapHalves(Bijection):
    """[a, b] -> [b, a] along channels (flowpp's ``TupleFlip``): after a coupling the
    half it changed conditions the next one."""

    volume_preserving = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        first, second = x.chunk(2, dim=1)
        return torch.cat([second, first], dim=1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self(z)[0]
