"""What a checkpoint saves of a run, and the counters that must survive a resume."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from flowtrain.flows.base import FlowModel
from flowtrain.likelihood import Preprocessing
from flowtrain.training.average import WeightAverage
from flowtrain.training.batches import BatchStream
from flowtrain.training.runtime import rng_state, set_rng_state


@dataclass
class LossWindow:
    """The training loss summed since the last log step. Part of the checkpoint, so a
    resumed run logs the same train/nll as one left alone. The sum stays on the device:
    adding to it costs no host sync."""

    nll_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    steps: int = 0

    def add(self, nll: torch.Tensor) -> None:
        if self.nll_sum.device != nll.device:  # once: the sum starts on the CPU
            self.nll_sum = self.nll_sum.to(nll.device)
        self.nll_sum += nll.detach()  # in place: no new tensor every step
        self.steps += 1

    def take_mean(self) -> float | None:
        """The mean over the window, which then starts again; None when it is empty."""
        mean = self.nll_sum.item() / self.steps if self.steps else None
        self.nll_sum, self.steps = torch.zeros_like(self.nll_sum), 0
        return mean


@dataclass
class NonFiniteCount:
    """Steps skipped for a NaN or infinite loss or gradient norm: in total, and in a row."""

    total: int = 0
    in_a_row: int = 0


@dataclass
class TrainingState:
    """Everything that decides the rest of a run; what a checkpoint saves."""

    model: FlowModel
    preprocessing: Preprocessing
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream
    device: torch.device = torch.device("cpu")
    step: int = 0
    # The lowest validation NLL so far and its step (-1: none yet): what best.pt holds.
    best_val_nll: float = math.inf
    best_step: int = -1
    window: LossWindow = field(default_factory=LossWindow)
    nonfinite: NonFiniteCount = field(default_factory=NonFiniteCount)
    average: WeightAverage | None = None  # train.ema_decay > 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluated(self) -> tuple[FlowModel, Preprocessing]:
        """What evaluation, pictures and best.pt selection use: the averaged weights when
        the run keeps an average, else the trained ones."""
        if self.average is None:
            return self.model, self.preprocessing
        return self.average.averaged["model"], self.average.averaged["preprocessing"]

    def update_average(self) -> None:
        if self.average is not None:
            self.average.update({"model": self.model, "preprocessing": self.preprocessing})

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_val_nll": self.best_val_nll,
            "best_step": self.best_step,
            "model": self.model.state_dict(),
            "preprocessing": self.preprocessing.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "batches": self.batches.state_dict(),
            "rng": rng_state(self.device),
            "window": {"nll_sum": self.window.nll_sum.cpu(), "steps": self.window.steps},
            "nonfinite": {"total": self.nonfinite.total, "in_a_row": self.nonfinite.in_a_row},
            **({"average": self.average.state_dict()} if self.average is not None else {}),
            **self.extra,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.preprocessing.load_state_dict(state["preprocessing"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"], self.device)
        self.step = int(state["step"])
        # Checkpoints from before the validation split chose best.pt on test: that choice
        # is not carried over, selection starts again on validation.
        self.best_val_nll = float(state.get("best_val_nll", math.inf))
        self.best_step = int(state.get("best_step", -1))
        self.window = LossWindow(state["window"]["nll_sum"].to(self.device),
                                 int(state["window"]["steps"]))
        self.nonfinite = NonFiniteCount(int(state["nonfinite"]["total"]),
                                        int(state["nonfinite"]["in_a_row"]))
        if self.average is not None and "average" in state:
            self.average.load_state_dict(state["average"])
