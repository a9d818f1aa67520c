"""Test-set numbers, computed one way for the training loop and for ``task=eval``, so a
checkpoint evaluated later gives exactly the numbers its run reported."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from flowtrain.data.base import FlowData
from flowtrain.flows.base import FlowModel
from flowtrain.likelihood import (
    Preprocessing,
    bits_per_dim,
    importance_weighted_nll,
    negative_log_likelihood,
)
from flowtrain.training.runtime import exact_float32

log = logging.getLogger(__name__)


@contextmanager
def evaluation_mode(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode, each back in the mode it was in after."""
    was_training = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(modules, was_training, strict=True):
            module.train(training)


def evaluation_generator(device: torch.device, seed: int) -> torch.Generator:
    """Where evaluation draws its dequantization noise: the same draws at every evaluation
    of a run, and none taken from the training random numbers."""
    return torch.Generator(device).manual_seed(seed)


@torch.no_grad()
def mean_nll(model: FlowModel, preprocessing: Preprocessing, points: torch.Tensor, *,
             batch_size: int, device: torch.device, seed: int, n_samples: int = 1,
             progress: bool = False) -> float:
    """Mean NLL (nats per example) over ``points``, in batches: the dequantization bound,
    or with ``n_samples`` > 1 the importance-weighted estimate over that many noise draws.
    Always fp32 (not bf16, not TF32), whatever the run trained in, so bits/dim compare
    across runs and a checkpoint evaluated later gives the number its run reported."""
    generator = evaluation_generator(device, seed)
    total = torch.zeros((), dtype=torch.float64, device=device)
    description = "eval" if n_samples == 1 else f"eval, {n_samples} draws"
    batches = tqdm(points.split(batch_size), desc=description, unit="batch",
                   disable=None if progress else True, dynamic_ncols=True)
    with evaluation_mode(model, preprocessing), exact_float32():
        for batch in batches:
            args = (model, preprocessing, batch.to(device))
            nll = (negative_log_likelihood(*args, generator=generator) if n_samples == 1
                   else importance_weighted_nll(*args, n_samples, generator)[0])
            total += nll.double().sum()
    return total.item() / len(points)


def evaluate_test_split(model: FlowModel, preprocessing: Preprocessing, data: FlowData, *,
                 batch_size: int, device: torch.device, seed: int,
                 test_nll: float | None = None, progress: bool = False) -> dict[str, Any]:
    """``test_nll`` and ``test_bpd`` (reusing ``test_nll`` when it is already known); with
    ``dequant.eval_samples`` > 1 also the importance-weighted ``test_nll_iw`` and
    ``test_bpd_iw``; where the data's density is known, ``test_nll_true`` and the gap."""
    measure = {"batch_size": batch_size, "device": device, "seed": seed, "progress": progress}
    if test_nll is None:
        test_nll = mean_nll(model, preprocessing, data.test, **measure)
    metrics: dict[str, Any] = {"test_nll": test_nll,
                               "test_bpd": bits_per_dim(test_nll, data.n_dims)}
    eval_samples = preprocessing.dequantizer.eval_samples
    if eval_samples > 1:
        test_nll_iw = mean_nll(model, preprocessing, data.test, n_samples=eval_samples,
                               **measure)
        metrics |= {"test_nll_iw": test_nll_iw, "eval_samples": eval_samples,
                    "test_bpd_iw": bits_per_dim(test_nll_iw, data.n_dims)}
        log.info("test bits/dim %.5f (bound), %.5f (importance-weighted, %d samples)",
                 metrics["test_bpd"], metrics["test_bpd_iw"], eval_samples)
    true_log_prob = data.true_log_prob(data.test)
    if true_log_prob is not None:
        metrics["test_nll_true"] = -true_log_prob.double().mean().item()
        metrics["test_nll_gap"] = test_nll - metrics["test_nll_true"]
    return metrics
