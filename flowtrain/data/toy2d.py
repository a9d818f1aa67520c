"""2-D toy densities: moons, rings, eight Gaussians, a checkerboard, and a picture.

All but the moons have a density known in closed form, so runs on them report
``test_nll_true``: rings and eight Gaussians are Gaussian mixtures (radial for the rings),
and the checkerboard and the picture are grids of weighted squares blurred by Gaussian
noise, whose density is a sum of products of normal CDF differences.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from flowtrain.data.base import FlowData, check_drawn_counts, draw_splits
from flowtrain.errors import DataError
from flowtrain.flows.base import HALF_LOG_2PI
from flowtrain.flows.mixture import normal_cdf


class Toy2DName(str, Enum):
    moons = "moons"
    rings = "rings"
    eight_gaussians = "eight_gaussians"
    checkerboard = "checkerboard"
    image = "image"


# Noise used when data.noise is null: what makes each set look like its name.
DEFAULT_NOISE = {Toy2DName.moons: 0.08, Toy2DName.rings: 0.08,
                 Toy2DName.eight_gaussians: 0.15, Toy2DName.checkerboard: 0.02,
                 Toy2DName.image: 0.01}


class ToyDensity(ABC):
    """A 2-D distribution that can be sampled and, where known, evaluated."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n points [n, 2] in float64."""

    def log_prob(self, x: Tensor) -> Tensor | None:
        return None


class Moons(ToyDensity):
    """Two interleaved half circles with Gaussian noise (no closed-form density)."""

    def __init__(self, noise: float):
        self.noise = noise

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        upper = torch.rand(n, generator=generator) < 0.5
        x = torch.where(upper, torch.cos(angle), 1.0 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        points = torch.stack([x, y], dim=1)
        return points + self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


class Rings(ToyDensity):
    """Uniform angle, radius r ~ sum_k w_k N(r_k, noise^2). A negative r lands at |r| on the
    opposite side, so p(x) = (p_r(|x|) + p_r(-|x|)) / (2 pi |x|): exact, and infinite (but
    integrable) only at the origin."""

    def __init__(self, noise: float, radii: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)):
        self.noise = noise
        self.radii = torch.tensor(radii, dtype=torch.float64)
        self.weights = self.radii / self.radii.sum()  # equal density of points along each ring

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        ring = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        radius = self.radii[ring] + self.noise * torch.randn(n, generator=generator,
                                                            dtype=torch.float64)
        angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        radius = x.double().norm(dim=1)
        both_signs = torch.cat([radius[:, None] - self.radii, radius[:, None] + self.radii], 1)
        u = both_signs / self.noise
        log_weights = torch.log(self.weights).repeat(2)
        log_radial = torch.logsumexp(log_weights - 0.5 * u.square()
                                     - HALF_LOG_2PI - math.log(self.noise), dim=1)
        return log_radial - torch.log(2 * math.pi * radius)


class EightGaussians(ToyDensity):
    """Eight isotropic Gaussians of std ``noise`` evenly spaced on a circle of radius 2."""

    def __init__(self, noise: float, radius: float = 2.0):
        self.noise = noise
        angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        self.centers = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        which = torch.randint(0, 8, (n,), generator=generator)
        return self.centers[which] + self.noise * torch.randn(n, 2, generator=generator,
                                                             dtype=torch.float64)

    def log_prob(self, x: Tensor) -> Tensor:
        squared = (x.double()[:, None, :] - self.centers).square().sum(dim=2)
        per_center = -0.5 * squared / self.noise**2 - 2 * (HALF_LOG_2PI + math.log(self.noise))
        return torch.logsumexp(per_center, dim=1) - math.log(8)


class WeightedGrid(ToyDensity):
    """A grid of equal squares: pick a square with probability proportional to its weight,
    a point uniformly inside it, then add N(0, noise^2 I).

    The density is separable per square, so over the grid it is one matrix product:
    p(x, y) = sum_{c,r} w[c, r] m_c(x) m_r(y) / side^2, with m the mass of a unit box blurred
    by the noise (a difference of normal CDFs; an indicator without noise).
    """

    def __init__(self, origin: tuple[float, float], side: float, weights: Tensor,
                 noise: float):
        self.origin = torch.tensor(origin, dtype=torch.float64)
        self.side = side
        self.weights = (weights / weights.sum()).double()  # [columns, rows]
        self.noise = noise

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        flat = torch.multinomial(self.weights.flatten(), n, replacement=True,
                                 generator=generator)
        rows = self.weights.shape[1]
        cell = torch.stack([flat // rows, flat % rows], dim=1).double()
        inside = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        noise = self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return self.origin + (cell + inside) * self.side + noise

    def _box_mass(self, coordinate: Tensor, count: int) -> Tensor:
        """[N, count]: how much of each grid column (or row) the noise carries to x."""
        offset = coordinate[:, None] - torch.arange(count, dtype=torch.float64) * self.side
        if self.noise > 0:
            upper, lower = offset / self.noise, (offset - self.side) / self.noise
            # Phi(upper) - Phi(lower), from whichever tail keeps its digits.
            return torch.where(lower > 0, normal_cdf(-lower) - normal_cdf(-upper),
                               normal_cdf(upper) - normal_cdf(lower))
        return ((offset >= 0) & (offset < self.side)).double()

    def log_prob(self, x: Tensor) -> Tensor:
        local = x.double() - self.origin
        columns, rows = self.weights.shape
        by_column = self._box_mass(local[:, 0], columns) @ self.weights
        density = (by_column * self._box_mass(local[:, 1], rows)).sum(dim=1)
        return torch.log(density / self.side**2)


def checkerboard(noise: float) -> WeightedGrid:
    """The 8 dark squares of a 4 x 4 board of unit squares on [-2, 2]^2."""
    dark = torch.tensor([[float((i + j) % 2 == 0) for j in range(4)] for i in range(4)])
    return WeightedGrid((-2.0, -2.0), 1.0, dark, noise)


def render_text(text: str, height: int = 40) -> np.ndarray:
    """A grayscale picture of ``text`` in [0, 1], drawn by matplotlib's own font."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = max(height, int(height * 0.75 * len(text)))
    # matplotlib's own defaults, not the user's rcParams, so the points are the same anywhere
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        figure = Figure(figsize=(width / 20, height / 20), dpi=20)
        figure.text(0.5, 0.5, text, ha="center", va="center", fontsize=height * 2.4,
                    fontweight="bold", family="DejaVu Sans")
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float64)
    return 1.0 - rgba[..., :3].mean(axis=2) / 255.0


def picture(noise: float, text: str) -> WeightedGrid:
    """Points in proportion to the darkness of ``text`` rendered as a picture, placed in a
    box 4 units wide centred on the origin (one square per pixel)."""
    intensity = render_text(text)
    intensity = np.where(intensity > 0.05, intensity, 0.0)
    if not intensity.any():
        raise DataError(f"data.image_text={text!r} renders to an empty picture; give some text")
    height, width = intensity.shape
    side = 4.0 / width
    # Picture rows run top to bottom; grid rows run bottom to top.
    weights = torch.tensor(intensity[::-1].T.copy())
    return WeightedGrid((-2.0, -height * side / 2), side, weights, noise)


_BUILDERS: dict[Toy2DName, Callable[..., ToyDensity]] = {
    Toy2DName.moons: lambda noise, text: Moons(noise),
    Toy2DName.rings: lambda noise, text: Rings(noise),
    Toy2DName.eight_gaussians: lambda noise, text: EightGaussians(noise),
    Toy2DName.checkerboard: lambda noise, text: checkerboard(noise),
    Toy2DName.image: lambda noise, text: picture(noise, text),
}


class Toy2D(FlowData):
    """``data=toy2d data.name=...``: points [N, 2] from one of the toy densities."""

    def __init__(self, name: Toy2DName | str = Toy2DName.moons, n_train: int = 20_000,
                 n_test: int = 5_000, noise: float | None = None, seed: int = 0,
                 standardize: bool = True, image_text: str = "FLOW", n_val: int = 2_000):
        name = Toy2DName(name)
        check_drawn_counts(n_train, n_val, n_test)
        noise = DEFAULT_NOISE[name] if noise is None else float(noise)
        needs_noise = name in (Toy2DName.rings, Toy2DName.eight_gaussians)
        if noise < 0 or (noise == 0 and needs_noise):
            bound = "positive" if needs_noise else "at least 0"
            raise DataError(f"data.noise must be {bound} for {name.value}; got {noise}")
        self.density = _BUILDERS[name](noise, image_text)
        train, val, test = draw_splits(lambda n, generator: self.density.sample(
            n, generator).float(), n_train, n_val, n_test, seed)
        super().__init__(train, test, name=name.value, standardize=standardize, val=val)

    def true_log_prob(self, x: Tensor) -> Tensor | None:
        log_prob = self.density.log_prob(x)
        return None if log_prob is None else log_prob.to(x.dtype)
