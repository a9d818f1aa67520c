"""Use a trained flow from Python: ``flowtrain.load(path)`` rebuilds a checkpoint's model,
preprocessing and dequantizer from the checkpoint alone (its stored config, data shape and
levels), so a CIFAR-10 model opens without the CIFAR-10 files.

    flow = flowtrain.load("outputs/DATE/TIME/checkpoints/best.pt")
    flow.bits_per_dim(images)        # per image, with the noise the run's evaluation drew
    flow.sample(16, seed=0)          # integer images, as the data set stores them
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from flowtrain.build import checkpoint_shape, rebuild_from_checkpoint
from flowtrain.data.base import as_stored
from flowtrain.errors import CheckpointError
from flowtrain.flows.base import FlowModel
from flowtrain.likelihood import (
    Preprocessing,
    bits_per_dim,
    importance_weighted_nll,
    negative_log_likelihood,
)
from flowtrain.training.checkpoint import load_checkpoint
from flowtrain.training.evaluation import evaluation_mode
from flowtrain.training.runtime import exact_float32

_FIX = ("Open it with the flowtrain version that wrote it, or retrain with this one; "
        "task=eval ckpt=... reports what it holds.")


@dataclass
class TrainedFlow:
    """A trained flow and its preprocessing, in evaluation mode, with the weights its run
    evaluated (the weight average, when the run kept one).

    Data go in and come out in the units of the data set it was trained on: integer images
    in 0 .. levels - 1 (their log-likelihood is the dequantization bound of the discrete
    probability), or continuous points."""

    model: FlowModel
    preprocessing: Preprocessing
    config: dict[str, Any]
    data_shape: tuple[int, ...]
    levels: int | None
    step: int
    device: torch.device

    @property
    def n_dims(self) -> int:
        return int(np.prod(self.data_shape))

    def _noise(self, seed: int | None) -> torch.Generator:
        """Where dequantization noise comes from: ``seed``, or the run's, which its
        evaluation seeded its noise with."""
        seed = int(self.config.get("seed", 0)) if seed is None else seed
        return torch.Generator(self.device).manual_seed(seed)

    def _batches(self, x: np.ndarray | Tensor) -> list[Tensor]:
        """``x`` checked against the data the flow was trained on, in batches of the run's
        evaluation batch size, as float tensors on the flow's device."""
        x = torch.as_tensor(x)
        if tuple(x.shape[1:]) != self.data_shape or x.dim() != len(self.data_shape) + 1:
            raise ValueError(f"this flow was trained on examples of shape {self.data_shape}; "
                             f"got an array of shape {tuple(x.shape)} (give [N, "
                             f"{', '.join(map(str, self.data_shape))}]; images stored "
                             f"[N, H, W, C] become [N, C, H, W] by x.permute(0, 3, 1, 2))")
        if self.levels is not None:
            if x.is_floating_point() or x.is_complex():
                raise ValueError(f"this flow was trained on integer data in 0 .. "
                                 f"{self.levels - 1}; got {x.dtype} values (values in [0, 1],"
                                 f" as torchvision's ToTensor gives, become those integers by "
                                 f"(x * {self.levels - 1}).round().to(torch.uint8))")
            if len(x) and (x.min() < 0 or x.max() >= self.levels):
                raise ValueError(f"values must lie in 0 .. {self.levels - 1}; got "
                                 f"{int(x.min())} .. {int(x.max())}")
        size = int(self.config["train"]["eval_batch_size"])
        return [batch.to(self.device, torch.float32) for batch in x.split(size)]

    @torch.no_grad()
    @exact_float32()
    def log_prob(self, x: np.ndarray | Tensor, n_samples: int = 1, seed: int | None = None
                 ) -> Tensor:
        """log p(x) per example in nats, in the data's own units: for integer data the
        dequantization bound, or with ``n_samples`` > 1 the importance-weighted estimate
        over that many noise draws (tighter). The noise comes from ``seed`` (default: the
        run's seed, as its evaluation drew it), so the same call gives the same number."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1; got {n_samples}")
        generator = self._noise(seed)
        results = []
        with evaluation_mode(self.model, self.preprocessing):
            for batch in self._batches(x):
                if n_samples == 1:
                    nll = negative_log_likelihood(self.model, self.preprocessing, batch,
                                                  generator)
                else:
                    nll, _ = importance_weighted_nll(self.model, self.preprocessing, batch,
                                                     n_samples, generator)
                results.append(-nll.cpu())
        return torch.cat(results) if results else torch.empty(0)

    def bits_per_dim(self, x: np.ndarray | Tensor, n_samples: int = 1,
                     seed: int | None = None) -> Tensor:
        """-log2 p(x) / D per example: what a run reports as bits/dim."""
        return bits_per_dim(-self.log_prob(x, n_samples, seed), self.n_dims)

    @torch.no_grad()
    @exact_float32()
    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None) -> Tensor:
        """``n`` samples in data space (integer images as the data set stores them, uint8
        where 256 levels or fewer); ``temperature`` scales a Gaussian base's noise."""
        generator = (torch.Generator(self.device).manual_seed(seed) if seed is not None
                     else None)
        with evaluation_mode(self.model, self.preprocessing):
            values = self.preprocessing.sample(self.model, n, temperature, generator).cpu()
        return as_stored(values, self.levels)

    @torch.no_grad()
    @exact_float32()
    def encode(self, x: np.ndarray | Tensor, seed: int | None = None) -> Tensor:
        """Data -> base space: z = f(preprocess(x)), dequantization noise from ``seed``
        (default: the run's seed)."""
        generator = self._noise(seed)
        with evaluation_mode(self.model, self.preprocessing):
            return torch.cat([self.model(self.preprocessing(batch, generator)[0])[0].cpu()
                              for batch in self._batches(x)])

    @torch.no_grad()
    @exact_float32()
    def decode(self, z: Tensor) -> Tensor:
        """Base space -> data space: the inverse of ``encode`` up to the dequantization
        noise (integer images come back as the integers they were)."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        with evaluation_mode(self.model, self.preprocessing):
            values = self.preprocessing.restore(self.model.inverse(z)).cpu()
        return as_stored(values, self.levels)


def load(path: str | Path, device: str | torch.device = "cpu") -> TrainedFlow:
    """The flow a checkpoint holds, rebuilt without its data set, on ``device``. Loaded
    with ``weights_only=True``: a checkpoint that carries code is refused."""
    path = Path(path).expanduser()
    saved = load_checkpoint(path)
    config = saved.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no config to rebuild its model from.")
    device = torch.device(device)
    model, preprocessing = rebuild_from_checkpoint(OmegaConf.create(config), saved, path,
                                                   device, fix=_FIX)
    model.eval()
    preprocessing.eval()
    event_shape, levels = checkpoint_shape(saved, path, None)
    return TrainedFlow(model, preprocessing, config, event_shape, levels,
                       int(saved.get("step", 0)), device)
