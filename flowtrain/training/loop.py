"""One training loop for every model: batch -> dequantize -> log_prob -> mean NLL -> step."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from flowtrain.config import TrainConfig
from flowtrain.data.base import FlowData
from flowtrain.errors import ConfigError, NonFiniteError
from flowtrain.flows.base import FlowModel
from flowtrain.likelihood import Preprocessing, bits_per_dim, negative_log_likelihood
from flowtrain.training.batches import BatchStream
from flowtrain.training.checkpoint import all_finite, remove_partial_writes, save_checkpoint
from flowtrain.training.distributed import DataParallelFlow, Ranks
from flowtrain.training.evaluation import evaluate_test_split, evaluation_mode, mean_nll
from flowtrain.training.figures import figures_for
from flowtrain.training.logger import RunLogger
from flowtrain.training.runtime import autocast, rng_state, set_rng_state
from flowtrain.training.stop import StopRequest

log = logging.getLogger(__name__)


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
    best_test_bpd: float = math.inf
    window: LossWindow = field(default_factory=LossWindow)
    nonfinite: NonFiniteCount = field(default_factory=NonFiniteCount)
    extra: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_test_bpd": self.best_test_bpd,
            "model": self.model.state_dict(),
            "preprocessing": self.preprocessing.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "batches": self.batches.state_dict(),
            "rng": rng_state(self.device),
            "window": {"nll_sum": self.window.nll_sum.cpu(), "steps": self.window.steps},
            "nonfinite": {"total": self.nonfinite.total, "in_a_row": self.nonfinite.in_a_row},
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
        self.best_test_bpd = float(state["best_test_bpd"])
        self.window = LossWindow(state["window"]["nll_sum"].to(self.device),
                                 int(state["window"]["steps"]))
        self.nonfinite = NonFiniteCount(int(state["nonfinite"]["total"]),
                                        int(state["nonfinite"]["in_a_row"]))


def check_train_config(cfg: TrainConfig) -> None:
    """Ranges the schema cannot express, checked before any work starts."""
    at_least_one = ("batch_size", "eval_every", "sample_every", "checkpoint_every",
                    "log_every", "eval_batch_size", "n_samples", "max_nonfinite")
    for key in at_least_one:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1; got {getattr(cfg, key)}")
    if cfg.sample_temperature <= 0:
        raise ConfigError(f"train.sample_temperature must be positive; got "
                          f"{cfg.sample_temperature}")
    if cfg.steps < 0 or cfg.grad_clip < 0:
        raise ConfigError("train.steps and train.grad_clip must not be negative "
                          "(train.grad_clip=0 turns clipping off)")


class Trainer:
    """Runs the loop and writes what every run leaves: tb/, checkpoints/, metrics.json."""

    def __init__(self, state: TrainingState, data: FlowData, cfg: TrainConfig,
                 run_dir: Path, device: torch.device, seed: int, resume_command: str = "",
                 ranks: Ranks | None = None):
        check_train_config(cfg)
        self.ranks = ranks or Ranks()
        self.batch_slice = self.ranks.batch_slice(cfg.batch_size)
        self.resume_command = resume_command or (
            f"flowtrain <this run's overrides> hydra.run.dir={run_dir} resume=true")
        self.state = state
        self.data = data
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = device
        self.seed = seed
        self.checkpoint_dir = run_dir / "checkpoints"
        # A learned dequantizer's parameters train with the model's; DDP only sees the model's.
        self.dequant_parameters = [p for p in state.preprocessing.parameters()
                                   if p.requires_grad]
        self.parameters = [p for p in state.model.parameters() if p.requires_grad]
        self.parameters += self.dequant_parameters
        if cfg.compile:
            # In place, so the state dict keeps its keys and checkpoints stay interchangeable.
            state.model.compile()
        # What a training step calls log_prob on: the model, or the model inside DDP.
        self.trained = (DataParallelFlow(state.model, device) if self.ranks.distributed
                        else state.model)
        self.last_test_nll: tuple[int, float] | None = None  # (step, value)

    # --- measuring -------------------------------------------------------------------

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Model and dequantizer in eval mode, and back to training after."""
        with evaluation_mode(self.state.model, self.state.preprocessing):
            yield

    def evaluate(self, points: torch.Tensor, n_samples: int = 1) -> float:
        """Mean NLL (nats per example) over ``points``, as ``task=eval`` measures it (the
        dequantization bound, or the importance-weighted estimate over ``n_samples``)."""
        return mean_nll(self.state.model, self.state.preprocessing, points,
                        batch_size=self.cfg.eval_batch_size, device=self.device,
                        seed=self.seed, n_samples=n_samples)

    @torch.no_grad()
    def draw_samples(self, n: int) -> torch.Tensor:
        """n samples in data space at ``train.sample_temperature``, from a generator of their
        own so that drawing them does not move the training RNG (a resumed run must see the
        same random numbers)."""
        generator = torch.Generator(self.device).manual_seed(self.seed + self.state.step)
        with self.evaluating():
            samples = self.state.model.sample(n, temperature=self.cfg.sample_temperature,
                                              generator=generator)
        return self.state.preprocessing.restore(samples)

    # --- writing ---------------------------------------------------------------------

    def save(self, name: str) -> None:
        if not self.ranks.is_main:
            return
        if not (all_finite(self.state.model) and all_finite(self.state.preprocessing)):
            raise NonFiniteError(
                f"step {self.state.step}: the model holds NaN or infinite weights; "
                f"checkpoints/{name} was not overwritten. Lower optim.lr or train.grad_clip.")
        save_checkpoint(self.state.state_dict(), self.checkpoint_dir / name)

    def log_figures(self, logger: RunLogger) -> None:
        if not self.ranks.is_main:
            return
        figures = figures_for(self.state.model, self.state.preprocessing, self.data,
                              self.draw_samples, self.cfg.n_samples)
        logger.figures(figures, self.state.step)

    # --- the loop ----------------------------------------------------------------------

    def train_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One step; its gradient norm. A non-finite loss or gradient norm skips the update
        (the schedule still advances, so the learning rate stays a function of the step)."""
        state = self.state
        with autocast(self.device, self.cfg.precision):
            nll = negative_log_likelihood(self.trained, state.preprocessing, batch,
                                          keep=self.batch_slice).mean()
        state.optimizer.zero_grad(set_to_none=True)
        nll.backward()
        self.ranks.average_gradients(self.dequant_parameters)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)
        # The global batch's loss: every rank then makes the same skip decision.
        nll = self.ranks.mean(nll)
        # One host sync per step: skipping must be decided before the optimizer moves.
        if bool(torch.isfinite(nll) & torch.isfinite(grad_norm)):
            state.optimizer.step()
            state.window.add(nll)
            state.nonfinite.in_a_row = 0
            state.scheduler.step()
        else:
            self.count_nonfinite(nll.item(), grad_norm.item())
            with warnings.catch_warnings():  # skipping the optimizer here is on purpose
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                        UserWarning)
                state.scheduler.step()
        state.step += 1
        return grad_norm.detach()

    def count_nonfinite(self, nll: float, grad_norm: float) -> None:
        count = self.state.nonfinite
        count.total += 1
        count.in_a_row += 1
        log.warning("step %d: skipped (loss %s, gradient norm %s); %d non-finite in a row",
                    self.state.step + 1, nll, grad_norm, count.in_a_row)
        if count.in_a_row >= self.cfg.max_nonfinite:
            raise NonFiniteError(
                f"step {self.state.step + 1}: {count.in_a_row} steps in a row had a NaN or "
                f"infinite loss or gradient norm (train.max_nonfinite={self.cfg.max_nonfinite})"
                f". The last checkpoint (checkpoints/last.pt) holds finite weights; lower "
                f"optim.lr (now {self.state.optimizer.param_groups[0]['lr']:g}) or "
                f"train.grad_clip and start again, or resume with: {self.resume_command}")

    def run(self) -> dict[str, Any]:
        cfg, state, n_dims = self.cfg, self.state, self.data.n_dims
        main = self.ranks.is_main  # rank 0 alone writes; the other ranks only train
        logger = RunLogger(self.run_dir, purge_step=state.step + 1 if state.step else None,
                           enabled=main)
        for partial in remove_partial_writes(self.checkpoint_dir) if main else []:
            log.info("removed %s, an unfinished write from a run that was killed", partial.name)
        first_step = state.step
        window_seconds, window_steps = 0.0, 0
        train_bpd = None  # stays None when a resumed run has no steps left
        if state.step >= cfg.steps:
            log.warning("the run is already at step %d of train.steps=%d; nothing to train. "
                        "Raise train.steps to continue it.", state.step, cfg.steps)
        train_seconds, started = 0.0, time.perf_counter()
        progress = tqdm(total=cfg.steps, initial=first_step, desc="train", unit="step",
                        disable=None if main else True, dynamic_ncols=True)
        try:
            with logging_redirect_tqdm(), StopRequest() as stop:
                stopping = False
                while state.step < cfg.steps and not stopping:
                    step_start = time.perf_counter()
                    batch = state.batches.next().to(self.device, non_blocking=True)
                    grad_norm = self.train_step(batch)
                    window_steps += 1
                    progress.update()
                    last = state.step == cfg.steps
                    if state.step % cfg.log_every == 0 or last:
                        window_seconds += time.perf_counter() - step_start
                        train_seconds += window_seconds
                        scalars = {
                            "lr": state.optimizer.param_groups[0]["lr"],
                            "grad_norm": grad_norm.item(),
                            "throughput": window_steps * cfg.batch_size / window_seconds,
                            "nonfinite_steps": state.nonfinite.total,
                        }
                        train_nll = state.window.take_mean()
                        if train_nll is not None:  # None: every step since the last was skipped
                            train_bpd = bits_per_dim(train_nll, n_dims)
                            scalars |= {"train/nll": train_nll, "train/bpd": train_bpd}
                            progress.set_postfix(nll=f"{train_nll:.4f}",
                                                 bpd=f"{train_bpd:.4f}")
                        logger.scalars(scalars, state.step)
                        window_seconds, window_steps = 0.0, 0
                    else:
                        # Only training steps count towards throughput, not evals or saves.
                        window_seconds += time.perf_counter() - step_start
                    if state.step % cfg.eval_every == 0 or last:
                        self.evaluate_and_keep_best(logger)
                    if state.step % cfg.sample_every == 0 or last:
                        self.log_figures(logger)
                    if state.step % cfg.checkpoint_every == 0 or last:
                        self.save("last.pt")
                        logger.flush()
                    stopping = self.ranks.any(stop.requested is not None, self.device)
                if stopping:
                    self.save("last.pt")
                    log.warning("%s at step %d: saved checkpoints/last.pt. Continue with: %s",
                                stop.requested or "a stop on another rank", state.step,
                                self.resume_command)
            progress.close()
            if not main:
                self.ranks.wait_for_all()  # until rank 0 has written the run's results
                return {}
            metrics = self.final_metrics(train_bpd, first_step, train_seconds,
                                         time.perf_counter() - started)
            metrics["stopped_by"] = stop.requested or ("another rank" if stopping else None)
            if "test_bpd_iw" in metrics:
                logger.scalars({"test/bpd_iw": metrics["test_bpd_iw"]}, state.step)
            self.log_hyperparameters(logger, metrics)
        finally:
            progress.close()
            logger.close()
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        self.ranks.wait_for_all()
        return metrics

    def log_hyperparameters(self, logger: RunLogger, metrics: dict[str, Any]) -> None:
        """The config and final numbers, for comparing a sweep in TensorBoard's HParams tab."""
        config = {key: value for key, value in self.state.extra.get("config", {}).items()
                  if key != "resume"}
        results = {f"hparams/{key}": metrics[key] for key in
                   ("test_bpd", "best_test_bpd", "train_bpd", "test_nll", "test_bpd_iw")
                   if isinstance(metrics.get(key), float)}
        logger.hyperparameters(config, results, self.state.step)

    def evaluate_and_keep_best(self, logger: RunLogger) -> None:
        if not self.ranks.is_main:
            return
        test_nll = self.evaluate(self.data.test)
        self.last_test_nll = (self.state.step, test_nll)
        test_bpd = bits_per_dim(test_nll, self.data.n_dims)
        logger.scalars({"test/nll": test_nll, "test/bpd": test_bpd}, self.state.step)
        log.info("step %d: test nll %.5f nats, %.5f bits/dim", self.state.step, test_nll,
                 test_bpd)
        if test_bpd < self.state.best_test_bpd:
            self.state.best_test_bpd = test_bpd
            self.save("best.pt")

    def final_metrics(self, train_bpd: float | None, first_step: int, train_seconds: float,
                      wall_seconds: float) -> dict[str, Any]:
        known = self.last_test_nll  # already measured at this step: not measured again
        test = evaluate_test_split(
            self.state.model, self.state.preprocessing, self.data,
            batch_size=self.cfg.eval_batch_size, device=self.device, seed=self.seed,
            test_nll=known[1] if known is not None and known[0] == self.state.step else None)
        steps_run = self.state.step - first_step
        metrics: dict[str, Any] = {
            "steps": self.state.step,
            "train_bpd": train_bpd,
            "test_nll": test["test_nll"],
            "test_bpd": test["test_bpd"],
            "best_test_bpd": self.state.best_test_bpd,
            "wall_s": wall_seconds,
            "train_samples_per_s": steps_run * self.cfg.batch_size / max(train_seconds, 1e-9),
            "params": sum(p.numel() for p in self.state.model.parameters()),
            "dequant_params": sum(p.numel() for p in self.dequant_parameters),
            "device": str(self.device),
            "nonfinite_steps": self.state.nonfinite.total,
        }
        return metrics | test
