"""Optimizer and learning-rate schedule from the ``optim`` config group."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from flowtrain.config import Schedule

# Keys of the optim group that shape the schedule rather than the torch optimizer.
_SCHEDULE_KEYS = ("schedule", "warmup_steps", "min_lr_ratio")


def build_optimizer(cfg: DictConfig, params: Iterable[torch.nn.Parameter]
                    ) -> torch.optim.Optimizer:
    """The torch optimizer named by ``_target_``, with every other non-schedule key."""
    options = OmegaConf.to_container(cfg, resolve=True)
    for key in _SCHEDULE_KEYS:
        options.pop(key, None)
    return instantiate(options, params=list(params))


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


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        return lr_factor(step, cfg.schedule, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
