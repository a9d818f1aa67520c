"""Pictures for TensorBoard: what the learned density and its latent space look like."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from flowtrain.data.base import FlowData  # noqa: E402
from flowtrain.flows.base import FlowModel  # noqa: E402
from flowtrain.likelihood import Preprocessing, negative_log_likelihood  # noqa: E402


@torch.no_grad()
def density_1d(model: FlowModel, preprocessing: Preprocessing, data: FlowData,
               samples: torch.Tensor, grid_points: int = 1000) -> Figure:
    """The learned density over the test histogram, the model's samples, and the truth."""
    device = next(model.parameters()).device
    test = data.test.squeeze(1)
    low, high = torch.quantile(test, torch.tensor([0.001, 0.999])).tolist()
    margin = 0.1 * (high - low)
    grid = torch.linspace(low - margin, high + margin, grid_points).unsqueeze(1)
    density = torch.exp(-negative_log_likelihood(model, preprocessing, grid.to(device))).cpu()
    figure, axes = plt.subplots(figsize=(7, 4))
    bins = torch.linspace(low - margin, high + margin, 101).numpy()
    axes.hist(test.numpy(), bins=bins, density=True, alpha=0.35, label="test data")
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
    """Histogram of z = f(x) on test data: flat when the flow maps the data onto its base."""
    device = next(model.parameters()).device
    y, _ = preprocessing(data.test.to(device))
    z, _ = model(y)
    figure, axes = plt.subplots(figsize=(7, 3))
    axes.hist(z.flatten().cpu().numpy(), bins=50, density=True, alpha=0.7)
    axes.axhline(1.0, color="k", ls="--", lw=1, label="Uniform(0, 1)")
    axes.set_xlabel("z = f(x), test data")
    axes.set_ylabel("density")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def figures_for(model: FlowModel, preprocessing: Preprocessing, data: FlowData,
                draw_samples: Callable[[], torch.Tensor]) -> dict[str, Figure]:
    """The figures that suit this data's shape, by TensorBoard tag (samples drawn only
    when a figure shows them)."""
    if data.event_shape == (1,):
        return {"density": density_1d(model, preprocessing, data, draw_samples()),
                "latent": latent_histogram(model, preprocessing, data)}
    return {}
