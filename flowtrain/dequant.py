"""Dequantizers: turn a batch of data into the continuous values a flow models.

Each returns ``(y, log_det)``, where ``log_det`` is the log|det| of whatever rescaling it
applies (the 1/K of uniform dequantization, the logit preprocessing), so
``flowtrain.likelihood`` keeps the reported likelihood in the data's own units: for
discrete data, -log P(x) <= -log p(y) - log_det, and bits/dim follow from it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.errors import ConfigError


class NoDequantization(nn.Module):
    """Continuous data: y = x."""

    def __init__(self, levels: int | None = None):
        super().__init__()
        if levels is not None:
            raise ConfigError(f"this data set is discrete ({levels} levels per value): use "
                              f"dequant=uniform (or dequant=auto) so its bits/dim mean "
                              f"something")

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        return x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def restore(self, y: Tensor) -> Tensor:
        return y


class UniformDequantization(nn.Module):
    """y = (x + u) / K with u ~ U[0, 1)^D; then, if ``logit_alpha`` > 0, the logit
    preprocessing of RealNVP: y' = logit(alpha + (1 - 2 alpha) y)."""

    def __init__(self, levels: int | None, logit_alpha: float = 0.0):
        super().__init__()
        if levels is None:
            raise ConfigError("dequant=uniform needs discrete data (images with data.levels); "
                              "this data set is continuous: use dequant=none (or dequant=auto)")
        if not 0.0 <= logit_alpha < 0.5:
            raise ConfigError(f"dequant.logit_alpha must be in [0, 0.5); got {logit_alpha}")
        self.levels = int(levels)
        self.logit_alpha = float(logit_alpha)

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        """``generator``: where the noise comes from (evaluation passes its own, so it
        neither moves the training RNG nor changes between evaluations)."""
        x = x.float() if not x.is_floating_point() else x
        noise = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        y = (x + noise) / self.levels
        n_dims = x[0].numel()
        log_det = torch.full((x.shape[0],), -n_dims * math.log(self.levels),
                             dtype=y.dtype, device=y.device)
        if self.logit_alpha > 0:
            y, logit_log_det = self.logit(y)
            log_det = log_det + logit_log_det
        return y, log_det

    def logit(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y' = logit(s), s = alpha + (1 - 2 alpha) y; log|dy'/dy| = log(1 - 2 alpha)
        - log s - log(1 - s), written with softplus so it stays exact near 0 and 1."""
        squeezed = self.logit_alpha + (1 - 2 * self.logit_alpha) * y
        logits = torch.log(squeezed) - torch.log1p(-squeezed)
        per_element = math.log(1 - 2 * self.logit_alpha) + F.softplus(-logits) + F.softplus(logits)
        return logits, per_element.flatten(1).sum(dim=1)

    def restore(self, y: Tensor) -> Tensor:
        """Model-space values back to data values in {0, ..., K-1}."""
        if self.logit_alpha > 0:
            y = (torch.sigmoid(y) - self.logit_alpha) / (1 - 2 * self.logit_alpha)
        return torch.floor(y * self.levels).clamp(0, self.levels - 1)


def auto_dequantization(levels: int | None, logit_alpha: float = 0.05) -> nn.Module:
    """``dequant=auto``: uniform dequantization for discrete data, none for continuous."""
    if levels is None:
        return NoDequantization()
    return UniformDequantization(levels, logit_alpha)
