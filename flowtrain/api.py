"""Use a trained flow from Python: ``flowtrain.load(path)`` rebuilds a checkpoint's model,
preprocessing and dequantizer from the checkpoint alone (its stored config, data shape and
levels), so a CIFAR-10 model opens without the CIFAR-10 files.

    flow = flowtrain.load("outputs/DATE/TIME/checkpoints/best.pt")
    flow.bits_per_dim(images)        # per image, with the noise the run's evaluation drew
    flow.sample(16, seed=0)          # integer images, as the data set stores them

A class-conditional flow (``model.conditional=true``) takes ``label=``: one class (its
index or name) for every example, or one per example: ``flow.sample(16, label=7)``,
``flow.bits_per_dim(images, label=labels)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from flowtrain.build import checkpoint_classes, checkpoint_shape, rebuild_from_checkpoint
from flowtrain.checkpoint_config import with_added_keys
from flowtrain.class_labels import labels_for
from flowtrain.data.base import as_stored
from flowtrain.errors import CheckpointError
from flowtrain.flows.base import FlowModel
from flowtrain.flows.tarflow import guided
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
    classes: tuple[str, ...] | None = None  # a class-conditional flow's; None: unconditional

    @property
    def n_dims(self) -> int:
        return int(np.prod(self.data_shape))

    def _labels(self, label: Any, n: int) -> Tensor | None:
        """``label`` (one class, or one per example) as the model's labels for ``n``
        examples; None for an unconditional flow, which refuses any label."""
        if self.classes is None:
            if label is not None:
                raise ValueError("this flow was trained without labels (model.conditional="
                                 "false): it models p(x), and label= has no meaning. Train "
                                 "with model.conditional=true on labelled data for p(x | "
                                 "class).")
            return None
        if label is None:
            shown = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
            raise ValueError(f"this flow is class-conditional: pass label= (a class index "
                             f"from 0 to {len(self.classes) - 1}, or a name: {shown})")
        return labels_for(label, n, self.classes).to(self.device)

    def _labelled_batches(self, x: np.ndarray | Tensor, label: Any
                          ) -> list[tuple[Tensor, Tensor | None]]:
        """``_batches`` of x, each with its labels (None for an unconditional flow)."""
        batches = self._batches(x)
        labels = self._labels(label, sum(len(batch) for batch in batches))
        if labels is None:
            return [(batch, None) for batch in batches]
        return list(zip(batches, labels.split([len(batch) for batch in batches]),
                        strict=True))

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
            # as Python ints: a uint8 tensor compared with 256 wraps it to 0
            low, high = (int(x.min()), int(x.max())) if len(x) else (0, 0)
            if low < 0 or high >= self.levels:
                raise ValueError(f"values must lie in 0 .. {self.levels - 1}; got "
                                 f"{low} .. {high}")
        size = int(self.config["train"]["eval_batch_size"])
        return [batch.to(self.device, torch.float32) for batch in x.split(size)]

    @torch.no_grad()
    @exact_float32()
    def log_prob(self, x: np.ndarray | Tensor, n_samples: int = 1, seed: int | None = None,
                 *, label: Any = None) -> Tensor:
        """log p(x) per example in nats (log p(x | label) for a class-conditional flow),
        in the data's own units: for integer data the dequantization bound, or with
        ``n_samples`` > 1 the importance-weighted estimate over that many noise draws
        (tighter). The noise comes from ``seed`` (default: the run's seed, as its
        evaluation drew it), so the same call gives the same number."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1; got {n_samples}")
        generator = self._noise(seed)
        results = []
        with evaluation_mode(self.model, self.preprocessing):
            for batch, labels in self._labelled_batches(x, label):
                if n_samples == 1:
                    nll = negative_log_likelihood(self.model, self.preprocessing, batch,
                                                  generator, context=labels)
                else:
                    nll, _ = importance_weighted_nll(self.model, self.preprocessing, batch,
                                                     n_samples, generator, labels)
                results.append(-nll.cpu())
        return torch.cat(results) if results else torch.empty(0)

    def bits_per_dim(self, x: np.ndarray | Tensor, n_samples: int = 1,
                     seed: int | None = None, *, label: Any = None) -> Tensor:
        """-log2 p(x) / D per example: what a run reports as bits/dim."""
        return bits_per_dim(-self.log_prob(x, n_samples, seed, label=label), self.n_dims)

    @torch.no_grad()
    @exact_float32()
    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None, *,
               label: Any = None, guidance: float = 0.0, guidance_annealed: bool = False
               ) -> Tensor:
        """``n`` samples in data space (integer images as the data set stores them, uint8
        where 256 levels or fewer), of the class ``label`` for a class-conditional flow;
        ``temperature`` scales a Gaussian base's noise; ``guidance`` > 0 steers a
        class-conditional TarFlow's samples towards the class (classifier-free guidance;
        ``guidance_annealed``: growing over the tokens, as the released FID evaluation)."""
        labels = self._labels(label, n)
        generator = (torch.Generator(self.device).manual_seed(seed) if seed is not None
                     else None)
        with (evaluation_mode(self.model, self.preprocessing),
              guided(self.model, guidance, guidance_annealed)):
            values = self.preprocessing.sample(self.model, n, temperature, generator,
                                               labels).cpu()
        return as_stored(values, self.levels)

    @torch.no_grad()
    @exact_float32()
    def encode(self, x: np.ndarray | Tensor, seed: int | None = None, *,
               label: Any = None) -> Tensor:
        """Data -> base space: z = f(preprocess(x)) (given ``label``, for a
        class-conditional flow), dequantization noise from ``seed`` (default: the run's
        seed)."""
        generator = self._noise(seed)
        with evaluation_mode(self.model, self.preprocessing):
            return torch.cat([
                self.model(self.preprocessing(batch, generator)[0], labels)[0].cpu()
                for batch, labels in self._labelled_batches(x, label)])

    @torch.no_grad()
    @exact_float32()
    def decode(self, z: Tensor, *, label: Any = None) -> Tensor:
        """Base space -> data space: the inverse of ``encode`` (under the same ``label``)
        up to the dequantization noise (integer images come back as the integers they
        were)."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        labels = self._labels(label, len(z))
        with evaluation_mode(self.model, self.preprocessing):
            values = self.preprocessing.restore(self.model.inverse(z, labels)).cpu()
        return as_stored(values, self.levels)


def load(path: str | Path, device: str | torch.device = "cpu") -> TrainedFlow:
    """The flow a checkpoint holds, rebuilt without its data set, on ``device``. Loaded
    with ``weights_only=True``: a checkpoint that carries code is refused."""
    path = Path(path).expanduser()
    saved = load_checkpoint(path)
    config = saved.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no config to rebuild its model from.")
    config = with_added_keys(config)  # an older checkpoint, as it was trained
    device = torch.device(device)
    model, preprocessing = rebuild_from_checkpoint(OmegaConf.create(config), saved, path,
                                                   device, fix=_FIX)
    model.eval()
    preprocessing.eval()
    event_shape, levels = checkpoint_shape(saved, path, None)
    return TrainedFlow(model, preprocessing, config, event_shape, levels,
                       int(saved.get("step", 0)), device,
                       checkpoint_classes(saved, OmegaConf.create(config), path))
