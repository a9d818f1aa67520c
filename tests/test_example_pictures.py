"""task=eval's pictures of the examples it scored: the most likely are the lowest values."""

from __future__ import annotations

import torch

from flowtrain.training.figures import EXTREMES, extremes_figure, likelihood_histogram


def test_the_extremes_are_the_lowest_and_highest_values_in_order():
    images = torch.arange(40).view(40, 1, 1, 1).expand(40, 1, 4, 4) % 17
    values = torch.linspace(3.0, 1.0, 40, dtype=torch.float64)  # the last image most likely
    figure = extremes_figure(images, values, 17, "bits/dim")
    top, bottom = figure.axes
    assert top.get_title() == f"most likely: 1.000 to {values[-EXTREMES]:.3f} bits/dim"
    assert bottom.get_title() == f"least likely: {values[EXTREMES - 1]:.3f} to 3.000 bits/dim"
    shown = top.get_images()[0].get_array()
    assert shown.shape[1] > shown.shape[0]  # one row of EXTREMES images


def test_a_histogram_marks_the_mean_it_shows():
    figure = likelihood_histogram(torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64),
                                  "bits/dim", "digits, test split (4 examples)")
    (axes,) = figure.axes
    assert axes.get_title() == "digits, test split (4 examples)"
    assert axes.get_legend().get_texts()[0].get_text() == "mean 3.0000"


def test_an_example_without_density_is_counted_not_drawn():
    figure = likelihood_histogram(torch.tensor([1.0, 2.0, float("inf")], dtype=torch.float64),
                                  "bits/dim", "fashion_mnist, test split (3 examples)")
    (axes,) = figure.axes
    assert axes.get_title().endswith("; 1 not finite, not shown")
    assert axes.get_legend().get_texts()[0].get_text() == "mean of the finite 1.5000"
