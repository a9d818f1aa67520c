"""The one flow interface every model follows, its composition, and the base distributions."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from flowtrain.errors import ConfigError

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# What an image model's shape error suggests instead.
FOR_POINTS = "For points use model=arflow2d or model=mixture_cdf."


def image_shape(event_shape: tuple[int, ...], option: str, fix: str = ""
                ) -> tuple[int, int, int]:
    """``event_shape`` as (C, H, W), or a ConfigError naming ``option`` (model=realnvp)
    and what to use instead."""
    if len(event_shape) != 3:
        raise ConfigError(f"{option} takes images [N, C, H, W]; got data of shape "
                          f"[N, {', '.join(map(str, event_shape))}]{'. ' + fix if fix else ''}")
    channels, height, width = event_shape
    return channels, height, width


class Bijection(nn.Module, ABC):
    """An invertible map: ``forward(x, context) -> (z, log_det)`` and
    ``inverse(z, context) -> x``.

    ``context``: what a conditional transform is conditioned on (features of the data for
    variational dequantization, a class label later); every other transform ignores it, so
    a composition passes it to all of its parts."""

    # True for maps that move no volume (reshapes, permutations): log|det| is 0 everywhere.
    volume_preserving: bool = False

    @abstractmethod
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """z = f(x) and log|det df/dx| per example, shape [B]."""

    @abstractmethod
    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """x = f^-1(z)."""


class TrainingPenalty(nn.Module):
    """A part of a model that adds to its training loss beyond -log p (Glow's class
    predictor): each training forward leaves ``penalty``, nats per example, which the
    training loop takes (``FlowModel.training_penalty``). The likelihood, and every number
    reported from it, leave it out."""

    def __init__(self) -> None:
        super().__init__()
        self.penalty: Tensor | None = None

    def take_penalty(self) -> Tensor | None:
        penalty, self.penalty = self.penalty, None
        return penalty

    def train(self, mode: bool = True) -> TrainingPenalty:
        self.penalty = None  # a penalty left untaken holds its graph (and blocks deepcopy)
        return super().train(mode)


class Compose(Bijection):
    """f = f_n o ... o f_1, log|det| summed over the parts (nflows' CompositeTransform).

    The parts are numbered children, like ``nn.ModuleList``'s, so state-dict keys read
    ``transforms.0.…`` wherever a composition is held as ``transforms``."""

    def __init__(self, transforms: Iterable[Bijection]):
        super().__init__()
        for index, transform in enumerate(transforms):
            self.add_module(str(index), transform)

    def __iter__(self) -> Iterator[Bijection]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int | slice) -> Bijection | list[Bijection]:
        return list(self)[index]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for transform in self:
            x, step_log_det = transform(x, context)
            log_det = log_det + step_log_det
        return x, log_det

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        for transform in reversed(list(self)):
            z = transform.inverse(z, context)
        return z


class Inverse(Bijection):
    """f^-1 as a bijection of its own (flowpp's ``Inverse``): merging what a split split,
    unsqueezing what a squeeze squeezed. Its log|det| is minus f's at the point it maps to."""

    def __init__(self, transform: Bijection):
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = self.transform.inverse(x, context)
        if self.transform.volume_preserving:  # no second pass just to learn it is zero
            return z, x.new_zeros(x.shape[0])
        return z, -self.transform(z, context)[1]

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.transform(z, context)[0]


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
        return -0.5 * flat.square().sum(dim=1) - flat.shape[1] * HALF_LOG_2PI

    def sample(
        self, n: int, *, like: Tensor, temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        noise = torch.randn((n, *self.event_shape), device=like.device, dtype=like.dtype,
                            generator=generator)
        return temperature * noise


class FlowModel(nn.Module):
    """A density p(x | context) = p_base(f(x)) |det df/dx|: a composition of bijections and
    a base distribution.

    Models subclass this (or build one) so the training loop only ever calls
    ``log_prob`` and ``sample``. A class-conditional model sets ``n_classes`` and takes
    the labels, int64 [B], as its context.
    """

    def __init__(self, transforms: Iterable[Bijection], base: nn.Module, n_classes: int = 0):
        super().__init__()
        self.transforms = Compose(transforms)
        self.base = base
        self.n_classes = n_classes

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """z = f(x) and log|det df/dx| per example."""
        return self.transforms(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.transforms.inverse(z, context)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        z, log_det = self(x, context)
        return self.base.log_prob(z) + log_det

    def training_penalty(self) -> Tensor | None:
        """What the last training forward adds to the loss beyond -log p, nats per example
        (``TrainingPenalty`` parts); None for a model without any."""
        penalties = [penalty for module in self.modules()
                     if isinstance(module, TrainingPenalty)
                     and (penalty := module.take_penalty()) is not None]
        return sum(penalties) if penalties else None

    @torch.no_grad()
    def sample(
        self, n: int, *, context: Tensor | None = None, temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        z = self.base.sample(n, like=next(self.parameters()), temperature=temperature,
                             generator=generator)
        return self.inverse(z, context)
