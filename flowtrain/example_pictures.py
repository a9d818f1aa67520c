"""What ``task=eval`` draws of the examples it scored: how their likelihoods spread, and
for images the ones the model finds most and least likely; where a mean hides what a
model does (a data set it was not trained on, the examples it fits worst), these show it."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from flowtrain.training.figures import image_grid

# Images a row of the most and of the least likely examples.
EXTREMES = 8


def likelihood_histogram(values: torch.Tensor, unit: str, what: str) -> Figure:
    """A histogram of the examples' ``values`` (bits/dim or nats each), their mean
    marked; ``what``: the data and split, for the title."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.hist(values.numpy(), bins=min(60, max(10, len(values) // 20)), color="tab:blue")
    mean = values.mean().item()
    axes.axvline(mean, color="black", linestyle="--", label=f"mean {mean:.4f}")
    axes.set_xlabel(f"{unit}, per example (lower: more likely)")
    axes.set_ylabel("examples")
    axes.set_title(what)
    axes.legend()
    figure.tight_layout()
    return figure


def extremes_figure(images: torch.Tensor, values: torch.Tensor, levels: int, unit: str
                    ) -> Figure:
    """The ``EXTREMES`` most likely examples of ``images`` (lowest ``values``) above the
    ``EXTREMES`` least likely, each row titled with the range of its values."""
    count = min(EXTREMES, len(images) // 2) or 1
    order = values.argsort()
    rows = {"most likely": order[:count], "least likely": order.flip(0)[:count]}
    figure = Figure(figsize=(1.2 * count + 0.5, 3.2))
    for axes, (name, chosen) in zip(figure.subplots(2, 1), rows.items(), strict=True):
        grid = image_grid(images[chosen], levels, per_row=count)
        axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        axes.set_title(f"{name}: {values[chosen].min():.3f} to {values[chosen].max():.3f} "
                       f"{unit}", fontsize=9)
        axes.axis("off")
    figure.tight_layout()
    return figure
