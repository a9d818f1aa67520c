"""The one flow interface every model follows, and the base distributions."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class Bijection(nn.Module, ABC):
    """An invertible map: ``forward(x) -> (z, log_det)`` and ``inverse(z) -> x``."""

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = f(x) and log|det df/dx| per example, shape [B]."""

    @abstractmethod
    def inverse(self, z: Tensor) -> Tensor:
        """x = f^-1(z)."""


class UniformBase(nn.Module):
    """Uniform(0, 1)^D: log-density 0 inside the unit cube. The base of CDF flows."""

    def __init__(self, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        inside = ((z >= 0) & (z <= 1)).flatten(1).all(dim=1)
        return torch.where(inside, 0.0, -math.inf).to(z.dtype)

    def sample(
        self, n: int, *, like: Tensor, temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """n points on the device and in the dtype of ``like`` (the model's parameters).

        Temperature has no meaning for a uniform base; it is accepted so every model
        samples through the same call."""
        return torch.rand((n, *self.event_shape), device=like.device, dtype=like.dtype,
                          generator=generator)


class StandardNormal(nn.Module):
    """N(0, I) over the event shape; sampling at temperature T draws from N(0, T^2 I)."""

    def __init__(self, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        flat = z.flatten(1)
        return -0.5 * (flat.square().sum(dim=1) + flat.shape[1] * math.log(2 * math.pi))

    def sample(
        self, n: int, *, like: Tensor, temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        noise = torch.randn((n, *self.event_shape), device=like.device, dtype=like.dtype,
                            generator=generator)
        return temperature * noise


class FlowModel(nn.Module):
    """A density p(x) = p_base(f(x)) |det df/dx| from a chain of bijections and a base.

    Models subclass this (or build one) so the training loop only ever calls
    ``log_prob`` and ``sample``.
    """

    def __init__(self, transforms: list[Bijection], base: nn.Module):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.base = base

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for transform in self.transforms:
            x, step_log_det = transform(x)
            log_det = log_det + step_log_det
        return x, log_det

    def inverse(self, z: Tensor) -> Tensor:
        for transform in reversed(self.transforms):
            z = transform.inverse(z)
        return z

    def log_prob(self, x: Tensor) -> Tensor:
        z, log_det = self(x)
        return self.base.log_prob(z) + log_det

    @torch.no_grad()
    def sample(
        self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        z = self.base.sample(n, like=next(self.parameters()), temperature=temperature,
                             generator=generator)
        return self.inverse(z)
