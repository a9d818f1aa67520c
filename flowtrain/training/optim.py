"""Optimizer and learning-rate schedule from the ``optim`` config group."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from flowtrain.config import Schedule, WeightDecayOn
from flowtrain.errors import ConfigError

# Keys of the optim group that shape the schedule or the parameter groups rather than the
# torch optimizer.
_NOT_FOR_THE_OPTIMIZER = ("schedule", "warmup_steps", "warmup_epochs", "min_lr_ratio",
                          "weight_decay_on")
# How torch's weight normalization names a layer's scale g (its direction v: original1).
_WEIGHT_SCALE_SUFFIX = "parametrizations.weight.original0"


def build_optimizer(cfg: DictConfig, named_parameters: Iterable[tuple[str, nn.Parameter]]
                    ) -> torch.optim.Optimizer:
    """The torch optimizer named by ``_target_``, with every other optimizer key. With
    ``weight_decay_on=weight_scales`` the weight decay applies to the scales g of the
    weight-normalized layers alone (RealNVP's L2 penalty, Section 4.1), not to every
    weight."""
    options = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_FOR_THE_OPTIMIZER:
        options.pop(key, None)
    named = list(named_parameters)
    # partial: Hydra would turn parameter groups (dicts) into configs on the way
    optimizer_class = instantiate(options, _partial_=True)
    if WeightDecayOn(cfg.weight_decay_on) is WeightDecayOn.all:
        return optimizer_class(params=[parameter for _, parameter in named])
    scales = [parameter for name, parameter in named if name.endswith(_WEIGHT_SCALE_SUFFIX)]
    if not scales:
        raise ConfigError("optim.weight_decay_on=weight_scales decays the scales of "
                          "weight-normalized layers, and this model has none; use "
                          "optim.weight_decay_on=all")
    others = [parameter for name, parameter in named
              if not name.endswith(_WEIGHT_SCALE_SUFFIX)]
    groups = [{"params": scales}, {"params": others, "weight_decay": 0.0}]
    return optimizer_class(params=groups)


def lr_factor(step: int, schedule: Schedule, warmup_steps: int, total_steps: int,
              min_lr_ratio: float) -> float:
    """The multiplier of the base learning rate at ``step`` (0-based)."""
    if Schedule(schedule) is Schedule.constant:
        return 1.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def warmup_steps(cfg: DictConfig, steps_per_epoch: int) -> int:
    """``optim.warmup_steps``, or ``optim.warmup_epochs`` passes of ``steps_per_epoch``
    (TarFlow's one-epoch warm-up: apple/ml-tarflow train.py, ``len(data_loader)``)."""
    epochs = cfg.get("warmup_epochs")
    if epochs is None:
        return int(cfg.warmup_steps)
    if epochs < 0:
        raise ConfigError(f"optim.warmup_epochs must be at least 0; got {epochs}")
    return round(epochs * steps_per_epoch)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule; ``steps_per_epoch`` counts ``optim.warmup_epochs``."""
    warmup = warmup_steps(cfg, steps_per_epoch)

    def factor(step: int) -> float:
        return lr_factor(step, cfg.schedule, warmup, total_steps, cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
