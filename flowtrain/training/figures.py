"""Pictures for TensorBoard and task=eval: what the learned density and its latent space
look like, and how the scored examples spread."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from flowtrain.class_labels import MAX_CLASS_ROWS, class_rows  # noqa: E402
from flowtrain.data.base import FlowData  # noqa: E402
from flowtrain.flows.base import FlowModel, UniformBase  # noqa: E402
from flowtrain.likelihood import Preprocessing, negative_log_likelihood  # noqa: E402


@torch.no_grad()
def density_1d(model: FlowModel, preprocessing: Preprocessing, data: FlowData,
               samples: torch.Tensor, grid_points: int = 1000) -> Figure:
    """The learned density over a histogram of held-out data
    (``data.points_for_pictures``), the model's samples, and the truth."""
    device = next(model.parameters()).device
    shown_as, points = data.points_for_pictures
    points = points.squeeze(1)
    low, high = torch.quantile(points, torch.tensor([0.001, 0.999])).tolist()
    margin = 0.1 * (high - low)
    grid = torch.linspace(low - margin, high + margin, grid_points).unsqueeze(1)
    density = torch.exp(-negative_log_likelihood(model, preprocessing, grid.to(device))).cpu()
    figure, axes = plt.subplots(figsize=(7, 4))
    bins = torch.linspace(low - margin, high + margin, 101).numpy()
    axes.hist(points.numpy(), bins=bins, density=True, alpha=0.35, label=f"{shown_as} data")
    axes.hist(samples.squeeze(1).clamp(bins[0], bins[-1]).cpu().numpy(), bins=bins,
              density=True, histtype="step", label="model samples")
    axes.plot(grid.squeeze(1).numpy(), density.numpy(), lw=2, label="learned density")
    true_log_prob = data.true_log_prob(grid)
    if true_log_prob is not None:
        axes.plot(grid.squeeze(1).numpy(), true_log_prob.exp().numpy(), "k--", lw=1,
                  label="true density")
    axes.set_xlabel("x")
    axes.set_ylabel("density")
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    return figure


@torch.no_grad()
def latent_histogram(model: FlowModel, preprocessing: Preprocessing, data: FlowData) -> Figure:
    """Histogram of z = f(x) on held-out data: flat when the flow maps the data onto its
    base."""
    device = next(model.parameters()).device
    shown_as, points = data.points_for_pictures
    y, _ = preprocessing(points.to(device))
    z, _ = model(y)
    figure, axes = plt.subplots(figsize=(7, 3))
    axes.hist(z.flatten().cpu().numpy(), bins=50, density=True, alpha=0.7)
    axes.axhline(1.0, color="k", ls="--", lw=1, label="Uniform(0, 1)")
    axes.set_xlabel(f"z = f(x), {shown_as} data")
    axes.set_ylabel("density")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def _plot_range(points: torch.Tensor, margin: float = 0.15) -> list[tuple[float, float]]:
    """Per-dimension limits covering all but the most extreme 0.1% of points."""
    limits = torch.quantile(points.double(), torch.tensor([0.001, 0.999], dtype=torch.float64),
                            dim=0)
    spans = limits[1] - limits[0]
    return [(low - margin * span, high + margin * span)
            for low, high, span in zip(limits[0].tolist(), limits[1].tolist(), spans.tolist(),
                                       strict=True)]


_MAX_SCATTER_POINTS = 5000  # more only blurs the scatter plots and slows them


@torch.no_grad()
def density_2d(model: FlowModel, preprocessing: Preprocessing, data: FlowData,
               samples: torch.Tensor, grid_points: int = 200) -> Figure:
    """Side by side: held-out data, log p on a grid, samples, and z = f(x) of the data."""
    device = next(model.parameters()).device
    shown_as, points = data.points_for_pictures
    shown = points[:_MAX_SCATTER_POINTS]
    (x_low, x_high), (y_low, y_high) = _plot_range(points)
    xs = torch.linspace(x_low, x_high, grid_points)
    ys = torch.linspace(y_low, y_high, grid_points)
    grid = torch.cartesian_prod(xs, ys)
    log_density = torch.cat([
        -negative_log_likelihood(model, preprocessing, chunk.to(device)).cpu()
        for chunk in grid.split(8192)]).view(grid_points, grid_points).T
    y, _ = preprocessing(shown.to(device))
    latent, _ = model(y)
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    scatter = {"s": 1, "alpha": 0.4, "rasterized": True}
    axes[0].scatter(shown[:, 0], shown[:, 1], **scatter)
    axes[0].set_title(f"{shown_as} data")
    floor = log_density.max().item() - 10.0  # 10 nats of range keep the structure readable
    image = axes[1].imshow(log_density.clamp_min(floor).numpy(), origin="lower",
                           extent=(x_low, x_high, y_low, y_high), aspect="auto",
                           cmap="viridis")
    figure.colorbar(image, ax=axes[1], fraction=0.046)
    axes[1].set_title("learned log p(x)")
    samples = samples.cpu()
    axes[2].scatter(samples[:, 0], samples[:, 1], color="tab:orange", **scatter)
    axes[2].set_title("samples")
    for axis in axes[:3]:
        axis.set_xlim(x_low, x_high)
        axis.set_ylim(y_low, y_high)
    latent = latent.cpu()
    axes[3].scatter(latent[:, 0], latent[:, 1], color="tab:green", **scatter)
    axes[3].set_title(f"z = f(x) of {shown_as} data")
    if isinstance(model.base, UniformBase):  # a good fit fills the unit square evenly
        axes[3].set_xlim(0, 1)
        axes[3].set_ylim(0, 1)
        axes[3].set_aspect("equal")
    figure.tight_layout()
    return figure


def image_grid(images: torch.Tensor, levels: int, per_row: int | None = None) -> torch.Tensor:
    """Integer images [N, C, H, W] in 0 .. levels-1 -> one [3, H', W'] grid in [0, 1],
    ``per_row`` images a row (default: about a square).

    Images smaller than 32 pixels are enlarged (nearest neighbour) so TensorBoard shows
    8x8 digits at a size a person can read."""
    from torchvision.utils import make_grid

    scaled = images.float().cpu() / (levels - 1)
    if scaled.shape[1] not in (1, 3):  # only gray and RGB are pictures; show channel 0
        scaled = scaled[:, :1]
    factor = max(1, 32 // min(images.shape[-2:]))
    if factor > 1:
        scaled = scaled.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    per_row = per_row or max(1, int(math.sqrt(len(images))))
    return make_grid(scaled, nrow=per_row, padding=1, pad_value=1.0)


def save_picture(picture: Figure | torch.Tensor, path: Path) -> None:
    """A matplotlib figure or an image tensor [C, H, W] in [0, 1] as a PNG file."""
    if isinstance(picture, Figure):
        picture.savefig(path, dpi=100)
        plt.close(picture)
    else:
        from torchvision.utils import save_image

        save_image(picture, path)


_IMAGE_GRID_SIZE = 64


def class_sample_grid(classes: Sequence[str], chosen: Sequence[Any] | None, levels: int,
                      draw_samples: Callable[..., torch.Tensor], n_samples: int
                      ) -> torch.Tensor:
    """A class-conditional model's samples, one row per class (``chosen``, or the first
    ten), as many a row as fit in a grid of ``n_samples`` (at most 64; at least one a
    row, at most 8)."""
    rows = min(len(chosen or classes), MAX_CLASS_ROWS)
    per_row = max(1, min(8, min(n_samples, _IMAGE_GRID_SIZE) // rows))
    labels = class_rows(classes, chosen, per_row)
    return image_grid(draw_samples(len(labels), labels), levels, per_row=per_row)


def figures_for(model: FlowModel, preprocessing: Preprocessing, data: FlowData,
                draw_samples: Callable[..., torch.Tensor], n_samples: int,
                sample_classes: Sequence[Any] | None = None
                ) -> dict[str, Figure | torch.Tensor]:
    """The pictures that suit this data's shape, by TensorBoard tag: matplotlib figures, or
    image tensors [C, H, W] (samples drawn only when a picture shows them, by
    ``draw_samples(n)``, or ``draw_samples(n, labels)`` for a class-conditional model's
    grid of one row per class: ``sample_classes``, or the first ten)."""
    if data.event_shape == (1,):
        return {"density": density_1d(model, preprocessing, data, draw_samples(n_samples)),
                "latent": latent_histogram(model, preprocessing, data)}
    if data.event_shape == (2,):
        return {"density": density_2d(model, preprocessing, data, draw_samples(n_samples))}
    if len(data.event_shape) == 3 and data.levels is not None and model.n_classes:
        return {"samples": class_sample_grid(data.labels.classes, sample_classes, data.levels,
                                             draw_samples, n_samples)}
    if len(data.event_shape) == 3 and data.levels is not None:
        # at most 64: an autoregressive flow pays a network pass per value for each one
        return {"samples": image_grid(draw_samples(min(n_samples, _IMAGE_GRID_SIZE)),
                                      data.levels)}
    return {}


# task=eval's picture of the most and of the least likely examples: images a row.
EXTREMES = 8


def likelihood_histogram(values: torch.Tensor, unit: str, what: str) -> Figure:
    """task=eval's histogram of the examples' ``values`` (bits/dim or nats each), their
    mean marked; ``what``: the data and split, for the title. An example the model gives
    no density (inf, as data it was not trained on can get) is counted in the title."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    finite = values[values.isfinite()]
    axes.hist(finite.numpy(), bins=min(60, max(10, len(finite) // 20)), color="tab:blue")
    left_out = len(values) - len(finite)
    if finite.numel():
        mean = finite.mean().item()
        axes.axvline(mean, color="black", linestyle="--",
                     label=f"mean{' of the finite' if left_out else ''} {mean:.4f}")
        axes.legend()
    axes.set_xlabel(f"{unit}, per example (lower: more likely)")
    axes.set_ylabel("examples")
    axes.set_title(what + (f"; {left_out} not finite, not shown" if left_out else ""))
    figure.tight_layout()
    return figure


def extremes_figure(images: torch.Tensor, values: torch.Tensor, levels: int, unit: str
                    ) -> Figure:
    """task=eval's ``EXTREMES`` most likely examples of ``images`` (lowest ``values``)
    above the ``EXTREMES`` least likely (half the split each, when it is smaller), each
    row titled with the range of its values."""
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
