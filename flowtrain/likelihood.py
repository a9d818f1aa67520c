"""The one place that turns a model's log-density into the numbers a run reports.

Every batch goes data -> dequantize -> standardize -> model. Each step before the model is a
change of variables whose log|det| is added back, so the negative log-likelihood is always
in the units of the data as given (nats per example); bits/dim divides it by D ln 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowtrain.data.base import FlowData
from flowtrain.dequant import Dequantizer
from flowtrain.flows.base import Bijection, FlowModel

# Samples per denoising pass: a backward pass keeps every activation of the model, for
# TarFlow's ImageNet 64x64 model (64 layers over 1024 tokens) gigabytes per sample.
DENOISE_CHUNK = 8


class Standardize(Bijection):
    """y = (x - mean) / std per dimension, with statistics fixed from the training split."""

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, train: Tensor) -> Standardize:
        flat = train.double().flatten(1)
        std = flat.std(dim=0).clamp_min(1e-6) if len(flat) > 1 else torch.ones(flat.shape[1])
        return cls(flat.mean(dim=0).view(train.shape[1:]).float(),
                   std.view(train.shape[1:]).float())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_det = -torch.log(self.std).sum().to(x.dtype)
        return (x - self.mean) / self.std, log_det.expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return z * self.std + self.mean


class Identity(Bijection):
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return z


class Preprocessing(nn.Module):
    """Data space -> model space: the dequantizer, then an optional fixed standardization."""

    def __init__(self, dequantizer: Dequantizer, standardize: Bijection):
        super().__init__()
        self.dequantizer = dequantizer
        self.standardize = standardize

    @classmethod
    def for_data(cls, dequantizer: Dequantizer, data: FlowData) -> Preprocessing:
        return cls(dequantizer, Standardize.fit(data.train) if data.standardize else Identity())

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        y, dequant_log_det = self.dequantizer(x, generator=generator)
        y, standardize_log_det = self.standardize(y)
        return y, dequant_log_det + standardize_log_det

    def restore(self, y: Tensor) -> Tensor:
        """Model samples back into data space."""
        return self.dequantizer.restore(self.standardize.inverse(y))

    def sample(self, model: FlowModel, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None, context: Tensor | None = None
               ) -> Tensor:
        """``n`` model samples in data space (given ``context``: a conditional model's
        labels, [n]); where the dequantizer's noise was Gaussian (``denoise_sigma``),
        first one denoising step (``denoise``)."""
        y = model.sample(n, context=context, temperature=temperature, generator=generator)
        sigma = self.dequantizer.denoise_sigma
        if sigma is not None:
            chunks = y.split(DENOISE_CHUNK)
            contexts = ([None] * len(chunks) if context is None
                        else context.split(DENOISE_CHUNK))
            y = torch.cat([self.denoise(model, chunk, sigma, chunk_context)
                           for chunk, chunk_context in zip(chunks, contexts, strict=True)])
        return self.restore(y)

    def denoise(self, model: FlowModel, y: Tensor, sigma: float,
                context: Tensor | None = None) -> Tensor:
        """Tweedie's step v + sigma^2 grad_v log p(v), in the space the noise was added in
        (v: before standardization): the posterior mean of the clean data for noise of
        std sigma, with the score from the flow's own gradient. Holds the activations of a
        backward pass over y: ``sample`` passes DENOISE_CHUNK samples at a time."""
        with torch.enable_grad():
            noisy = self.standardize.inverse(y.detach()).requires_grad_(True)
            standardized, log_det = self.standardize(noisy)
            log_density = model.log_prob(standardized, context) + log_det
            (score,) = torch.autograd.grad(log_density.sum(), noisy)
        return self.standardize(noisy.detach() + sigma ** 2 * score)[0]


def negative_log_likelihood(model: FlowModel, preprocessing: Preprocessing, x: Tensor,
                            generator: torch.Generator | None = None,
                            keep: slice | None = None, context: Tensor | None = None
                            ) -> Tensor:
    """-log p(x | context) in nats per example, in data units: -(log p_model(y) +
    log|dy/dx|). For discrete data it is the dequantization bound, with noise from
    ``generator``.

    ``keep``: only x[keep] (and context[keep]) goes through the model, but the whole batch
    is preprocessed, so under torchrun every rank draws the noise one process would draw
    for the global batch and keeps its own slice of it."""
    y, log_det = preprocessing(x, generator=generator)
    if keep is not None:
        y, log_det = y[keep], log_det[keep]
        context = None if context is None else context[keep]
    return -(model.log_prob(y, context) + log_det)


def importance_weighted_nll(model: FlowModel, preprocessing: Preprocessing, x: Tensor,
                            n_samples: int, generator: torch.Generator | None = None,
                            context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The importance-weighted estimate -log (1/S) sum_s P(x, u_s) / q(u_s | x) over S noise
    draws (Burda et al. 2016), and the dequantization bound averaged over the same draws.

    By Jensen's inequality the first never exceeds the second, and it tightens towards
    -log P(x) as S grows; with S = 1 both are ``negative_log_likelihood``."""
    log_weights = torch.stack([-negative_log_likelihood(model, preprocessing, x, generator,
                                                        context=context)
                               for _ in range(n_samples)])
    estimate = -(torch.logsumexp(log_weights, dim=0) - math.log(n_samples))
    return estimate, -log_weights.mean(dim=0)


def bits_per_dim(nll: Tensor | float, n_dims: int) -> Tensor | float:
    """Nats per example -> bits per dimension."""
    return nll / (n_dims * math.log(2.0))
