"""Dequantizers: turn a batch of data into the continuous values a flow models.

Each returns ``(y, log_det)``, where ``log_det`` is the log|det| of whatever rescaling it
applies, so ``flowtrain.likelihood`` can keep the reported likelihood in the data's units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NoDequantization(nn.Module):
    """Continuous data: y = x."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def restore(self, y: Tensor) -> Tensor:
        return y
