"""Flow++'s coupling network (Ho et al. 2019; aravindsrinivas/flowpp, flows/flows.py
``gated_conv``, ``gated_attn``, ``MixLogisticAttnCoupling``): a 3x3 convolution in, then
blocks of gated residual convolution -> layer norm -> gated multi-head self-attention over
all positions -> layer norm, and a 3x3 convolution out.

"Gated": the residual branch ends in 2F channels a, b and adds a * sigmoid(b). The
nonlinearity is concat_elu, elu([x, -x]), which doubles the channels it is applied to.
The released layers start from a data-dependent initialization (their outputs scaled to
unit variance on a first batch, the gated outputs to 0.1); these start from torch's
default initialization and the output convolution from zero, so every coupling starts as
the identity (docs/FIDELITY.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# flowpp's flows.py: pos_emb ~ N(0, 0.01^2); layernorm's epsilon.
_POSITION_STD = 0.01
_LAYER_NORM_EPS = 1e-5


def concat_elu(x: Tensor) -> Tensor:
    return F.elu(torch.cat([x, -x], dim=1))


def gate(x: Tensor) -> Tensor:
    """a * sigmoid(b) for the channel halves [a, b]."""
    value, gate_logits = x.chunk(2, dim=1)
    return value * torch.sigmoid(gate_logits)


class GatedResidualConv(nn.Module):
    """``gated_conv``: x + gate(out(dropout(concat_elu(conv(concat_elu(x)) +
    nin(concat_elu(context)))))). ``out`` is 1x1 inside the coupling networks (use_nin)
    and 3x3 in the dequantizer's context network."""

    def __init__(self, n_filters: int, dropout: float, context_channels: int = 0,
                 output_kernel: int = 1):
        super().__init__()
        self.first = nn.Conv2d(2 * n_filters, n_filters, 3, padding=1)
        self.from_context = (nn.Conv2d(2 * context_channels, n_filters, 1)
                             if context_channels else None)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv2d(2 * n_filters, 2 * n_filters, output_kernel,
                             padding=output_kernel // 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        hidden = self.first(concat_elu(x))
        if self.from_context is not None:
            hidden = hidden + self.from_context(concat_elu(context))
        return x + gate(self.out(self.dropout(concat_elu(hidden))))


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels at every position of a [B, C, H, W] map."""

    def __init__(self, n_channels: int):
        super().__init__(n_channels, eps=_LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GatedSelfAttention(nn.Module):
    """``gated_attn``: x + gate(proj(dropout(attention(x + positions)))), multi-head
    scaled dot-product self-attention over all H x W positions, no mask."""

    def __init__(self, n_filters: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(n_filters, 3 * n_filters, 1)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv2d(n_filters, 2 * n_filters, 1)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(x + positions).reshape(batch, 3, self.heads, channels // self.heads,
                                               height * width)
        query, key, value = qkv.transpose(-1, -2).unbind(dim=1)  # [B, heads, HW, dim] each
        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.transpose(-1, -2).reshape(batch, channels, height, width)
        return x + gate(self.out(self.dropout(attended)))


class FlowppBlock(nn.Module):
    def __init__(self, n_filters: int, heads: int, dropout: float, context_channels: int):
        super().__init__()
        self.conv = GatedResidualConv(n_filters, dropout, context_channels)
        self.norm_conv = ChannelLayerNorm(n_filters)
        self.attention = GatedSelfAttention(n_filters, heads, dropout)
        self.norm_attention = ChannelLayerNorm(n_filters)

    def forward(self, x: Tensor, positions: Tensor, context: Tensor | None) -> Tensor:
        x = self.norm_conv(self.conv(x, context))
        return self.norm_attention(self.attention(x, positions))


class FlowppNetwork(nn.Module):
    """[B, in, H, W] (and a context [B, context_channels, H, W]) -> [B, out, H, W]. One
    learned position embedding, shared by the blocks, so the network is built for one
    H x W."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int],
                 n_filters: int, n_blocks: int, heads: int, dropout: float,
                 context_channels: int = 0):
        super().__init__()
        self.positions = nn.Parameter(_POSITION_STD * torch.randn(1, n_filters, *size))
        self.input = nn.Conv2d(in_channels, n_filters, 3, padding=1)
        self.blocks = nn.ModuleList(FlowppBlock(n_filters, heads, dropout, context_channels)
                                    for _ in range(n_blocks))
        self.output = nn.Conv2d(n_filters, out_channels, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = self.input(x)
        for block in self.blocks:
            x = block(x, self.positions, context)
        return self.output(x)


class ContextNetwork(nn.Module):
    """The released variational dequantizer's ``shallow_processor``: a 3x3 convolution to
    ``width`` channels, then ``n_blocks`` gated residual convolutions (3x3 out)."""

    def __init__(self, in_channels: int, width: int, n_blocks: int, dropout: float):
        super().__init__()
        self.input = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*(GatedResidualConv(width, dropout, output_kernel=3)
                                      for _ in range(n_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.input(x))
