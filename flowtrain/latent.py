"""Walks through a flow's latent space: encode two data points, follow the straight line
between their latents, decode every point on it (the picture flow papers show). Every
base flowtrain has allows it: N(0, I) has density everywhere, and a line between two points
of the unit cube stays inside it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowtrain.flows.base import FlowModel
from flowtrain.likelihood import Preprocessing
from flowtrain.training.runtime import exact_float32


@dataclass
class Interpolation:
    """``pairs`` [P, 2, *event] data points; ``encoded`` [P, 2, *event] their model-space
    values; ``decoded`` [P, S, *event] the model-space values along each line and
    ``restored`` the same in data space (endpoints included)."""

    pairs: Tensor
    encoded: Tensor
    decoded: Tensor
    restored: Tensor


@torch.no_grad()
@exact_float32()
def interpolate(model: FlowModel, preprocessing: Preprocessing, pairs: Tensor, steps: int,
                generator: torch.Generator | None = None, labels: Tensor | None = None
                ) -> Interpolation:
    """z_t = (1 - t) f(y_a) + t f(y_b) for ``steps`` values of t from 0 to 1, decoded with
    f^-1, where y = the preprocessed pair (dequantization noise from ``generator``). A
    class-conditional model walks each pair under its class, ``labels`` [P]."""
    n_pairs, event_shape = pairs.shape[0], pairs.shape[2:]
    device = next(model.parameters()).device
    labels = None if labels is None else labels.to(device)
    encoded, _ = preprocessing(pairs.flatten(0, 1).to(device), generator=generator)
    latent, _ = model(encoded, None if labels is None else labels.repeat_interleave(2))
    latent = latent.reshape(n_pairs, 2, *event_shape)
    weights = torch.linspace(0.0, 1.0, steps, device=device, dtype=latent.dtype)
    weights = weights.view(1, steps, *([1] * len(event_shape)))
    path = (1 - weights) * latent[:, :1] + weights * latent[:, 1:]
    decoded = model.inverse(path.flatten(0, 1),
                            None if labels is None else labels.repeat_interleave(steps))
    return Interpolation(pairs=pairs, encoded=encoded.reshape(n_pairs, 2, *event_shape),
                         decoded=decoded.reshape(n_pairs, steps, *event_shape),
                         restored=preprocessing.restore(decoded).reshape(n_pairs, steps,
                                                                      *event_shape))
