"""Glow's coupling as released (openai/glow, model.py ``revnet2d_step`` and ``f``).

The first half of the channels conditions the second through the network
3x3 conv -> ActNorm -> ReLU -> 1x1 conv -> ActNorm -> ReLU -> zero-initialized 3x3 conv,
whose output is scaled by exp(3 * logs) per channel (``conv2d_zeros``, logscale_factor 3).
ActNorm stands in for the convolutions' biases, and the 3x3 convolutions see one extra
input channel that is 1 on the zero-padded border (tfops.py ``add_edge_padding``), so the
network can tell padding from black pixels. Affine: z2 = (z2 + shift) * sigmoid(h + 2);
additive: z2 = z2 + h.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.base import Bijection

# The released code's weight initialization, N(0, 0.05) (tfops.py default_initializer),
# and its zero convolution's logscale_factor.
_INIT_STD = 0.05
_LOGSCALE_FACTOR = 3.0


class GlowCoupling(str, Enum):
    affine = "affine"  # z2 = (z2 + shift) * sigmoid(h + 2): the CIFAR-10 command's
    additive = "additive"  # z2 = z2 + h: the released code's default


def with_edge_channel(x: Tensor) -> Tensor:
    """x zero-padded by one pixel, with one more channel that is 1 on the padding."""
    padded = F.pad(x, (1, 1, 1, 1))
    border = F.pad(x.new_zeros(x.shape[0], 1, *x.shape[2:]), (1, 1, 1, 1), value=1.0)
    return torch.cat([padded, border], dim=1)


class EdgePaddedConv3x3(nn.Module):
    """A 3x3 convolution over ``with_edge_channel(x)``: one more input channel, no padding
    of its own; a bias only where no ActNorm follows."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(with_edge_channel(x))


class Normalized(nn.Module):
    """ActNorm inside a network, where only its output is wanted (its log-det is not part
    of the flow's)."""

    def __init__(self, n_channels: int):
        super().__init__()
        self.actnorm = ActNorm(n_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.actnorm(x)[0]


class ZeroConv3x3(nn.Module):
    """``conv2d_zeros``: an edge-padded 3x3 convolution starting at zero, its output
    scaled by exp(3 * logs) per channel; the coupling starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = EdgePaddedConv3x3(in_channels, out_channels, bias=True)
        nn.init.zeros_(self.conv.conv.weight)
        nn.init.zeros_(self.conv.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(_LOGSCALE_FACTOR * self.logs)


def released_network(in_channels: int, out_channels: int, width: int) -> nn.Sequential:
    """The released coupling network ``f``."""
    first = EdgePaddedConv3x3(in_channels, width, bias=False)
    second = nn.Conv2d(width, width, 1, bias=False)
    for conv in (first.conv, second):
        nn.init.normal_(conv.weight, std=_INIT_STD)
    return nn.Sequential(first, Normalized(width), nn.ReLU(inplace=True),
                         second, Normalized(width), nn.ReLU(inplace=True),
                         ZeroConv3x3(width, out_channels))


class ReleasedGlowCoupling(Bijection):
    """The first ``C // 2`` channels condition the rest, through ``released_network``."""

    def __init__(self, n_channels: int, width: int, coupling: GlowCoupling | str):
        super().__init__()
        self.coupling = GlowCoupling(coupling)
        self.n_kept = n_channels // 2
        n_changed = n_channels - self.n_kept
        per_channel = 2 if self.coupling is GlowCoupling.affine else 1
        self.network = released_network(self.n_kept, per_channel * n_changed, width)

    def _shift_and_log_scale(self, kept: Tensor) -> tuple[Tensor, Tensor | None]:
        # Back to the input's dtype: under bf16 autocast only the network runs in bf16.
        h = self.network(kept).to(kept.dtype)
        if self.coupling is GlowCoupling.additive:
            return h, None
        # interleaved, as released: shift h[..., 0::2], scale h[..., 1::2]
        return h[:, 0::2], F.logsigmoid(h[:, 1::2] + 2.0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept, changed = x[:, :self.n_kept], x[:, self.n_kept:]
        shift, log_scale = self._shift_and_log_scale(kept)
        changed = changed + shift
        if log_scale is None:
            return torch.cat([kept, changed], dim=1), x.new_zeros(x.shape[0])
        changed = changed * torch.exp(log_scale)
        return torch.cat([kept, changed], dim=1), log_scale.flatten(1).sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        kept, changed = z[:, :self.n_kept], z[:, self.n_kept:]
        shift, log_scale = self._shift_and_log_scale(kept)
        if log_scale is not None:
            changed = changed * torch.exp(-log_scale)
        return torch.cat([kept, changed - shift], dim=1)
