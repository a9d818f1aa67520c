"""Validation and test numbers, computed one way for the training loop and for
``task=eval``, so a checkpoint evaluated later gives exactly the numbers its run reported."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from flowtrain.data.base import FlowData
from flowtrain.errors import DataError
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


def labels_to_score(model: FlowModel, data: FlowData, split: str) -> torch.Tensor | None:
    """The labels a class-conditional model is scored with on ``split`` (its NLL is then
    -log p(x | y)); None for an unconditional model, which ignores any labels."""
    if not model.n_classes:
        return None
    labels = data.split_labels(split)
    if labels is None:
        raise DataError(f"this model is class-conditional, and {data.name} has no class "
                        f"labels to score it with: give it labelled data (the data set it "
                        f"was trained on)")
    if data.n_classes != model.n_classes:
        raise DataError(f"this model is conditioned on {model.n_classes} classes and "
                        f"{data.name} has {data.n_classes}: give it data with its classes "
                        f"(leave data=... out for the data set it was trained on)")
    return labels


@torch.no_grad()
def example_nlls(model: FlowModel, preprocessing: Preprocessing, points: torch.Tensor, *,
                 batch_size: int, device: torch.device, seed: int, n_samples: int = 1,
                 progress: bool = False, labels: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """The NLL (nats) of every example of ``points`` (given their ``labels``, for a
    class-conditional model), float64 on the CPU, in batches: the dequantization bound,
    or with ``n_samples`` > 1 the importance-weighted estimate over that many noise draws.
    Always fp32 (not bf16, not TF32), whatever the run trained in, so bits/dim compare
    across runs and a checkpoint evaluated later gives the number its run reported."""
    generator = evaluation_generator(device, seed)
    description = "eval" if n_samples == 1 else f"eval, {n_samples} draws"
    point_batches = points.split(batch_size)
    label_batches = (labels.split(batch_size) if labels is not None
                     else [None] * len(point_batches))
    batches = tqdm(zip(point_batches, label_batches, strict=True),
                   total=len(label_batches), desc=description, unit="batch",
                   disable=None if progress else True, dynamic_ncols=True)
    nlls = []
    with evaluation_mode(model, preprocessing), exact_float32():
        for batch, batch_labels in batches:
            args = (model, preprocessing, batch.to(device))
            context = None if batch_labels is None else batch_labels.to(device)
            nll = (negative_log_likelihood(*args, generator=generator, context=context)
                   if n_samples == 1
                   else importance_weighted_nll(*args, n_samples, generator, context)[0])
            nlls.append(nll.double())  # on the device: one copy back at the end, no sync
    return torch.cat(nlls).cpu()


def mean_of(nlls: torch.Tensor) -> float:
    """The mean of per-example NLLs, summed in float64: every reported number is this."""
    return nlls.sum().item() / len(nlls)


def mean_nll(model: FlowModel, preprocessing: Preprocessing, points: torch.Tensor,
             **measure: Any) -> float:
    """Mean NLL (nats per example) over ``points``: ``example_nlls`` averaged."""
    return mean_of(example_nlls(model, preprocessing, points, **measure))


def split_metrics(split: str, nll: float, data: FlowData) -> dict[str, float]:
    """{"val_nll": ..., "val_bpd": ...}: a split's mean NLL and, for quantized data, its
    bits per dimension."""
    return {f"{split}_nll": nll,
            **({f"{split}_bpd": bits_per_dim(nll, data.n_dims)} if data.discrete else {})}


def evaluate_split(model: FlowModel, preprocessing: Preprocessing, data: FlowData,
                   split: str, *, batch_size: int, device: torch.device, seed: int,
                   progress: bool = False) -> dict[str, Any]:
    """``{split}_nll`` and, for quantized data, ``{split}_bpd``; with
    ``dequant.eval_samples`` > 1 also the importance-weighted ``{split}_nll_iw`` and
    ``{split}_bpd_iw``; where the data's density is known,
    ``{split}_nll_true`` and the gap."""
    return split_evaluation(model, preprocessing, data, split, batch_size=batch_size,
                            device=device, seed=seed, progress=progress)[0]


def split_evaluation(model: FlowModel, preprocessing: Preprocessing, data: FlowData,
                     split: str, *, batch_size: int, device: torch.device, seed: int,
                     progress: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``evaluate_split``'s metrics, and the NLL of every example they average (``nll``,
    and ``nll_iw`` with ``dequant.eval_samples`` > 1)."""
    points = data.split(split)
    measure = {"batch_size": batch_size, "device": device, "seed": seed, "progress": progress,
               "labels": labels_to_score(model, data, split)}
    examples = {"nll": example_nlls(model, preprocessing, points, **measure)}
    metrics: dict[str, Any] = split_metrics(split, mean_of(examples["nll"]), data)
    eval_samples = preprocessing.dequantizer.eval_samples
    if eval_samples > 1:
        examples["nll_iw"] = example_nlls(model, preprocessing, points,
                                          n_samples=eval_samples, **measure)
        metrics |= {f"{key}_iw": value
                    for key, value in split_metrics(split, mean_of(examples["nll_iw"]),
                                                    data).items()}
        metrics["eval_samples"] = eval_samples
        key = f"{split}_{data.reported_as}"
        log.info("%s: %.5f (bound), %.5f (importance-weighted, %d samples)", key,
                 metrics[key], metrics[f"{key}_iw"], eval_samples)
    true_log_prob = data.true_log_prob(points)
    if true_log_prob is not None:
        nll = metrics[f"{split}_nll"]
        metrics[f"{split}_nll_true"] = -true_log_prob.double().mean().item()
        metrics[f"{split}_nll_gap"] = nll - metrics[f"{split}_nll_true"]
    return metrics, examples
