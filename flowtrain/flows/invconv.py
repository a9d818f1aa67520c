"""Invertible 1x1 convolution (Kingma & Dhariwal, "Glow", 2018), in LU form.

z = W x at every pixel, with W = P L (U + diag(sign * exp(log_abs_diagonal))): P a fixed
permutation, L unit lower-triangular, U strictly upper-triangular. Then
log|det dz/dx| = H W sum(log_abs_diagonal), O(C) instead of the O(C^3) of a determinant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.flows.base import Bijection


class InvertibleConv1x1(Bijection):
    """A learned channel mixing, starting as a random rotation (W orthogonal, log-det 0)."""

    def __init__(self, n_channels: int):
        super().__init__()
        orthogonal, _ = torch.linalg.qr(torch.randn(n_channels, n_channels))
        permutation, lower, upper = torch.linalg.lu(orthogonal)
        diagonal = torch.diagonal(upper)
        strictly_lower = torch.tril(torch.ones(n_channels, n_channels), diagonal=-1)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", torch.sign(diagonal))
        self.register_buffer("lower_mask", strictly_lower)
        self.register_buffer("upper_mask", strictly_lower.T.clone())
        self.lower = nn.Parameter(lower * strictly_lower)
        self.upper = nn.Parameter(upper * strictly_lower.T)
        self.log_abs_diagonal = nn.Parameter(torch.log(diagonal.abs()))

    def _factors(self) -> tuple[Tensor, Tensor]:
        """L (unit diagonal) and U (with the signed diagonal), masked so that the
        parameters' off-triangle entries never enter W."""
        identity = torch.eye(self.lower.shape[0], dtype=self.lower.dtype,
                             device=self.lower.device)
        lower = self.lower * self.lower_mask + identity
        upper = (self.upper * self.upper_mask
                 + torch.diag(self.sign * torch.exp(self.log_abs_diagonal)))
        return lower, upper

    def weight(self) -> Tensor:
        """W = P L U, [C, C]."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """W^-1 = U^-1 L^-1 P^T, by triangular solves (P is orthogonal)."""
        lower, upper = self._factors()
        inverse_lower_times_pt = torch.linalg.solve_triangular(
            lower, self.permutation.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, inverse_lower_times_pt, upper=True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # A transform, not a network: kept out of bf16 autocast so it stays invertible.
        with torch.autocast(x.device.type, enabled=False):
            weight = self.weight()
            z = F.conv2d(x, weight.view(*weight.shape, 1, 1))
        log_det = self.log_abs_diagonal.sum() * (x.shape[2] * x.shape[3])
        return z, log_det.expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):
            inverse_weight = self.inverse_weight()
            return F.conv2d(z, inverse_weight.view(*inverse_weight.shape, 1, 1))


# flowpp's flows.py ``Pointwise``: W starts as I + 0.001 N(0, 1) (noisy_identity_init).
NEAR_IDENTITY_NOISE = 0.001


class DenseInvertibleConv1x1(Bijection):
    """z = W x at every pixel with W held as a full matrix, log|det| by a float64
    determinant: Flow++'s released ``Pointwise``, which starts near the identity. C^2
    numbers instead of the LU form's 2C^2 + C (whose masked halves never train), so a
    model built of these has the released parameter count; for the small C of Flow++'s
    halves the O(C^3) determinant costs nothing."""

    def __init__(self, n_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(n_channels) + NEAR_IDENTITY_NOISE
                                   * torch.randn(n_channels, n_channels))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            z = F.conv2d(x, self.weight.view(*self.weight.shape, 1, 1))
            log_abs_det = torch.linalg.slogdet(self.weight.double()).logabsdet.to(x.dtype)
        return z, (log_abs_det * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):
            inverse_weight = torch.linalg.inv(self.weight.double()).to(z.dtype)
            return F.conv2d(z, inverse_weight.view(*inverse_weight.shape, 1, 1))
