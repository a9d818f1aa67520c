"""Flow++'s coupling network (Ho et al. 2019; aravindsrinivas/flowpp, flows/flows.py
``gated_conv``, ``gated_attn``, ``MixLogisticAttnCoupling``): a 3x3 convolution in, then
blocks of gated residual convolution -> layer norm -> gated multi-head self-attention over
all positions -> layer norm, and a 3x3 convolution out.

"Gated": the residual branch ends in 2F channels a, b and adds a * sigmoid(b). The
nonlinearity is concat_elu, elu([x, -x]), which doubles the channels it is applied to.

Initialization (``FlowppInit``): ``identity`` starts every convolution from torch's
default and the output convolution from zero, so every coupling starts as the identity;
``released`` is the released data-dependent initialization (``DataInitConv2d``).
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.flows.data_init import InitializedOnFirstBatch, batch_moments

# flowpp's flows.py: pos_emb ~ N(0, 0.01^2); layernorm's epsilon.
_POSITION_STD = 0.01
_LAYER_NORM_EPS = 1e-5
# flowpp's flows.py conv2d and dense: W ~ N(0, 0.05^2), then on the first batch every
# output channel scaled to init_scale / sqrt(var + 1e-8) and shifted to zero mean; the
# gated outputs (c2, proj2) and the output convolution (MixLogisticAttnCoupling's
# init_scale) to 0.1, the rest to 1.
_RELEASED_WEIGHT_STD = 0.05
_RELEASED_VARIANCE_EPS = 1e-8
OUTPUT_INIT_SCALE = 0.1


class FlowppInit(str, Enum):
    """``model.init`` / ``dequant.init`` for Flow++'s networks."""

    identity = "identity"  # torch's default, the output convolution zero
    released = "released"  # the released data-dependent initialization


class DataInitConv2d(nn.Conv2d, InitializedOnFirstBatch):
    """A convolution initialized as the released code initializes its layers: weights
    N(0, 0.05^2), and on the first training batch every output channel rescaled to
    variance ``init_scale`` squared and zero mean (statistics all-reduced across
    processes, so every process starts identical). A channel whose outputs do not vary
    on that batch (an input that is still constant, such as a zero-initialized class
    embedding) keeps its weights: rescaled by 1/sqrt(1e-8), it would answer the first
    change of its input 10,000 times too loudly."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 init_scale: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.init_scale = init_scale
        nn.init.normal_(self.weight, std=_RELEASED_WEIGHT_STD)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean, variance = batch_moments(self._conv_forward(x, self.weight, None), (0, 2, 3))
        scale = torch.where(variance > _RELEASED_VARIANCE_EPS,
                            self.init_scale * torch.rsqrt(variance + _RELEASED_VARIANCE_EPS),
                            torch.ones_like(variance))
        self.weight.mul_(scale.view(-1, 1, 1, 1))
        self.bias.copy_(-mean * scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.needs_initializing():
            # In full precision, outside autocast: its cache of bf16 weight copies would
            # still hold the weights from before the rescaling.
            with torch.autocast(x.device.type, enabled=False):
                x = x.to(torch.promote_types(x.dtype, self.weight.dtype))
                self.initialize(x)
                return super().forward(x)
        return super().forward(x)


def flowpp_conv(in_channels: int, out_channels: int, kernel_size: int, init: FlowppInit,
                init_scale: float = 1.0) -> nn.Conv2d:
    """One of the network's convolutions, initialized as ``init`` says (``init_scale``:
    the released initialization's output scale)."""
    if init is FlowppInit.released:
        return DataInitConv2d(in_channels, out_channels, kernel_size, init_scale)
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


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
                 output_kernel: int = 1, *, init: FlowppInit):
        super().__init__()
        self.first = flowpp_conv(2 * n_filters, n_filters, 3, init)
        self.from_context = (flowpp_conv(2 * context_channels, n_filters, 1, init)
                             if context_channels else None)
        self.dropout = nn.Dropout(dropout)
        self.out = flowpp_conv(2 * n_filters, 2 * n_filters, output_kernel, init,
                               OUTPUT_INIT_SCALE)

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

    def __init__(self, n_filters: int, heads: int, dropout: float, *, init: FlowppInit):
        super().__init__()
        self.heads = heads
        self.qkv = flowpp_conv(n_filters, 3 * n_filters, 1, init)
        self.dropout = nn.Dropout(dropout)
        self.out = flowpp_conv(n_filters, 2 * n_filters, 1, init, OUTPUT_INIT_SCALE)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(x + positions).reshape(batch, 3, self.heads, channels // self.heads,
                                               height * width)
        query, key, value = qkv.transpose(-1, -2).unbind(dim=1)  # [B, heads, HW, dim] each
        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.transpose(-1, -2).reshape(batch, channels, height, width)
        return x + gate(self.out(self.dropout(attended)))


class FlowppBlock(nn.Module):
    def __init__(self, n_filters: int, heads: int, dropout: float, context_channels: int, *,
                 init: FlowppInit):
        super().__init__()
        self.conv = GatedResidualConv(n_filters, dropout, context_channels, init=init)
        self.norm_conv = ChannelLayerNorm(n_filters)
        self.attention = GatedSelfAttention(n_filters, heads, dropout, init=init)
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
                 context_channels: int = 0, *, init: FlowppInit | str):
        super().__init__()
        init = FlowppInit(init)
        self.positions = nn.Parameter(_POSITION_STD * torch.randn(1, n_filters, *size))
        self.input = flowpp_conv(in_channels, n_filters, 3, init)
        self.blocks = nn.ModuleList(FlowppBlock(n_filters, heads, dropout, context_channels,
                                                init=init) for _ in range(n_blocks))
        self.output = flowpp_conv(n_filters, out_channels, 3, init, OUTPUT_INIT_SCALE)
        if init is FlowppInit.identity:
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

    def __init__(self, in_channels: int, width: int, n_blocks: int, dropout: float, *,
                 init: FlowppInit):
        super().__init__()
        self.input = flowpp_conv(in_channels, width, 3, init)
        self.blocks = nn.Sequential(*(GatedResidualConv(width, dropout, output_kernel=3,
                                                        init=init)
                                      for _ in range(n_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.input(x))
