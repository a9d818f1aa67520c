"""The 2-D toy sets: closed-form densities that integrate to 1 and match their samples."""

from __future__ import annotations

import pytest
import torch

from flowtrain.data.toy2d import Toy2D, Toy2DName
from flowtrain.errors import DataError

KNOWN = ["rings", "eight_gaussians", "checkerboard", "image"]
# Integration grids: wide enough to hold the mass, fine enough for the noise (the picture
# is small and sharp, and its density costs the most to evaluate).
GRIDS = {"rings": (6.0, 1201), "eight_gaussians": (6.0, 1201), "checkerboard": (6.0, 1201),
         "image": (2.5, 601)}


def _grid(name: str):
    limit, points = GRIDS[name]
    axis = torch.linspace(-limit, limit, points, dtype=torch.float64)
    return axis, torch.cartesian_prod(axis, axis)


@pytest.mark.parametrize("name", KNOWN)
def test_true_density_integrates_to_one(name):
    data = Toy2D(name, n_train=10, n_test=10)
    axis, grid = _grid(name)
    density = data.density.log_prob(grid).exp().view(len(axis), len(axis))
    integral = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis).item()
    assert abs(integral - 1.0) < 5e-3, integral


@pytest.mark.parametrize("name", KNOWN)
def test_samples_follow_the_true_density(name):
    """The share of samples in each quadrant equals the density's mass there."""
    data = Toy2D(name, n_train=40_000, n_test=10)
    axis, grid = _grid(name)
    density = data.density.log_prob(grid).exp().view(len(axis), len(axis))
    cell = (axis[1] - axis[0]).item() ** 2
    for x_sign in (-1, 1):
        for y_sign in (-1, 1):
            in_quadrant = ((grid[:, 0] * x_sign > 0) & (grid[:, 1] * y_sign > 0)).view_as(density)
            mass = (density * in_quadrant).sum().item() * cell
            points = data.train.double()
            share = ((points[:, 0] * x_sign > 0) & (points[:, 1] * y_sign > 0)).double().mean()
            assert abs(share.item() - mass) < 0.015, (x_sign, y_sign, share, mass)


def test_moons_has_no_closed_form():
    assert Toy2D("moons", n_train=10, n_test=10).true_log_prob(torch.zeros(3, 2)) is None


@pytest.mark.parametrize("name", [n.value for n in Toy2DName])
def test_same_seed_same_points(name):
    first, second = Toy2D(name, n_train=50, n_test=5), Toy2D(name, n_train=50, n_test=5)
    assert torch.equal(first.train, second.train) and first.train.shape == (50, 2)


def test_noise_must_be_positive_where_it_sets_the_scale():
    with pytest.raises(DataError, match="data.noise must be positive"):
        Toy2D("eight_gaussians", noise=0.0)


def test_empty_picture_is_refused():
    with pytest.raises(DataError, match="empty picture"):
        Toy2D("image", image_text=" ")
