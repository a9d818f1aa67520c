"""ActNorm (Kingma & Dhariwal 2018): a per-channel affine map initialized from data.

z = (x + bias) * exp(log_scale), with bias and log_scale chosen on the first training batch
so that z has zero mean and unit variance per channel (or, with ``size``, per channel and
position: Flow++'s ``Norm``). The ``initialized`` flag is a buffer,
so a resumed run keeps its initialized state instead of re-initializing on its first batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowtrain.flows.base import Bijection
from flowtrain.flows.data_init import InitializedOnFirstBatch, batch_moments

# Keeps a constant channel (MNIST's borders) from dividing by zero at initialization.
_STD_EPSILON = 1e-6


class ActNorm(Bijection, InitializedOnFirstBatch):
    """``size=(H, W)``: one scale and bias per channel and position, statistics over the
    batch alone (flowpp's flows.py ``Norm``); default: per channel (Glow's)."""

    def __init__(self, n_channels: int, size: tuple[int, int] | None = None):
        super().__init__()
        shape = (1, n_channels, *(size or (1, 1)))
        self.per_position = size is not None
        self.bias = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Zero mean, unit variance per channel (or per element) on this batch
        (all-reduced when the batch is split across processes, so every process starts
        identical)."""
        mean, variance = batch_moments(x, (0,) if self.per_position else (0, 2, 3))
        std = variance.clamp_min(0).sqrt()
        self.bias.copy_(-mean.view_as(self.bias))
        self.log_scale.copy_(-torch.log(std + _STD_EPSILON).view_as(self.log_scale))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.needs_initializing():
            self.initialize(x)
        z = (x + self.bias) * torch.exp(self.log_scale)
        positions = 1 if self.per_position else x.shape[2] * x.shape[3]
        log_det = self.log_scale.sum() * positions
        return z, log_det.expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return z * torch.exp(-self.log_scale) - self.bias
