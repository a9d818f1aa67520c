"""The 2-D toy sets: closed-form densities that integrate to 1 and match their samples."""

from __future__ import annotations

import functools

import pytest
import torch

from flowtrain.data.toy2d import Toy2D, Toy2DName
from flowtrain.errors import DataError

KNOWN = ["rings", "eight_gaussians", "checkerboard", "image"]
# Integration grids: wide enough to hold the mass, fine enough for the noise (the picture
# is small and sharp, and its density costs the most to evaluate).
GRIDS = {"rings": (6.0, 1201), "eight_gaussians": (6.0, 1201), "checkerboard": (6.0, 1201),
         "image": (3.0, 601)}


@functools.cache
def _density_on_grid(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid's axis and the closed-form density on it, computed once per set: both
    tests below read it (the picture's density takes seconds to evaluate)."""
    limit, points = GRIDS[name]
    axis = torch.linspace(-limit, limit, points, dtype=torch.float64)
    density = Toy2D(name, n_train=10, n_test=10).density.log_prob(
        torch.cartesian_prod(axis, axis)).exp().view(points, points)
    return axis, density


@pytest.mark.parametrize("name", KNOWN)
def test_true_density_integrates_to_one(name):
    axis, density = _density_on_grid(name)
    integral = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis).item()
    assert abs(integral - 1.0) < 5e-3, integral


@pytest.mark.parametrize("name", KNOWN)
def test_samples_follow_the_true_density(name):
    """Binned on a fine grid, the samples and the closed-form density agree: total
    variation below 0.03 (its sampling noise here is about 0.01). Swapping light and dark
    squares, equal ring weights or a wrong noise scale all give far more."""
    limit, points = GRIDS[name]
    data = Toy2D(name, n_train=200_000, n_test=10)
    axis, density = _density_on_grid(name)
    cell = (axis[1] - axis[0]).item() ** 2
    bins = 24
    per_bin = (points - 1) // bins
    mass = (density[:-1, :-1] * cell).reshape(bins, per_bin, bins, per_bin).sum(dim=(1, 3))
    counts = torch.histogramdd(data.train.double(), bins=[bins, bins],
                               range=[-limit, limit, -limit, limit]).hist
    shares = counts / len(data.train)
    total_variation = 0.5 * (shares - mass).abs().sum().item()
    assert total_variation < 0.03, total_variation


def test_rings_density_counts_negative_radii():
    """With noise as wide as the inner ring some radii come out negative; the density
    folds them back and still integrates to 1."""
    data = Toy2D("rings", noise=0.6, n_train=10, n_test=10)
    step = 0.01  # cell midpoints: the density is infinite (but integrable) at the origin
    axis = torch.arange(-7.0 + step / 2, 7.0, step, dtype=torch.float64)
    density = data.density.log_prob(torch.cartesian_prod(axis, axis)).exp()
    assert abs(density.sum().item() * step**2 - 1) < 1e-2


def test_grid_density_stays_finite_far_from_the_squares():
    """15 noise scales out (ndtr alone would give 0 beyond about 8)."""
    data = Toy2D("checkerboard", n_train=10, n_test=10)
    far = torch.tensor([[-2.2, -1.5], [2.3, 2.3], [0.5, -2.25]], dtype=torch.float64)
    assert torch.isfinite(data.density.log_prob(far)).all()


def test_moons_has_no_closed_form():
    assert Toy2D("moons", n_train=10, n_test=10).true_log_prob(torch.zeros(3, 2)) is None


@pytest.mark.parametrize("name", [n.value for n in Toy2DName])
def test_same_seed_same_points(name):
    first, second = Toy2D(name, n_train=50, n_test=5), Toy2D(name, n_train=50, n_test=5)
    assert torch.equal(first.train, second.train) and first.train.shape == (50, 2)


def test_sizes_must_be_positive():
    with pytest.raises(DataError, match="data.n_train and data.n_test"):
        Toy2D("moons", n_train=-5, n_test=100)


def test_noise_must_be_positive_where_it_sets_the_scale():
    with pytest.raises(DataError, match="data.noise must be positive"):
        Toy2D("eight_gaussians", noise=0.0)


def test_empty_picture_is_refused():
    with pytest.raises(DataError, match="empty picture"):
        Toy2D("image", image_text=" ")
