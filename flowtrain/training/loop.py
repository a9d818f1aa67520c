"""One training loop for every model: batch -> dequantize -> log_prob -> mean NLL -> step."""

from __future__ import annotations

import json
import logging
import math
import time
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
from flowtrain.training.checkpoint import all_finite, save_checkpoint
from flowtrain.training.figures import figures_for
from flowtrain.training.logger import RunLogger
from flowtrain.training.runtime import rng_state, set_rng_state
from flowtrain.training.stop import StopRequest

log = logging.getLogger(__name__)


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


def check_train_config(cfg: TrainConfig) -> None:
    """Ranges the schema cannot express, checked before any work starts."""
    at_least_one = ("batch_size", "eval_every", "sample_every", "checkpoint_every",
                    "log_every", "eval_batch_size", "n_samples")
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
                 run_dir: Path, device: torch.device, seed: int, resume_command: str = ""):
        check_train_config(cfg)
        self.resume_command = resume_command or (
            f"flowtrain <this run's overrides> hydra.run.dir={run_dir} resume=true")
        self.state = state
        self.data = data
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = device
        self.seed = seed
        self.checkpoint_dir = run_dir / "checkpoints"
        self.parameters = [p for p in state.model.parameters() if p.requires_grad]
        self.last_test_nll: tuple[int, float] | None = None  # (step, value)

    # --- measuring -------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, points: torch.Tensor) -> float:
        """Mean NLL (nats per example) over ``points``, in evaluation batches."""
        self.state.model.eval()
        # The same dequantization noise at every evaluation, drawn apart from training's.
        generator = torch.Generator(self.device).manual_seed(self.seed)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in points.split(self.cfg.eval_batch_size):
            nll = negative_log_likelihood(self.state.model, self.state.preprocessing,
                                          batch.to(self.device), generator=generator)
            total += nll.double().sum()
        self.state.model.train()
        return total.item() / len(points)

    def true_test_nll(self) -> float | None:
        true_log_prob = self.data.true_log_prob(self.data.test)
        return None if true_log_prob is None else -true_log_prob.double().mean().item()

    @torch.no_grad()
    def draw_samples(self, n: int) -> torch.Tensor:
        """n samples in data space at ``train.sample_temperature``, from a generator of their
        own so that drawing them does not move the training RNG (a resumed run must see the
        same random numbers)."""
        generator = torch.Generator(self.device).manual_seed(self.seed + self.state.step)
        self.state.model.eval()
        samples = self.state.model.sample(n, temperature=self.cfg.sample_temperature,
                                          generator=generator)
        self.state.model.train()
        return self.state.preprocessing.restore(samples)

    # --- writing ---------------------------------------------------------------------

    def save(self, name: str) -> None:
        if not all_finite(self.state.model):
            raise NonFiniteError(
                f"step {self.state.step}: the model holds NaN or infinite weights; "
                f"checkpoints/{name} was not overwritten. Lower optim.lr or train.grad_clip.")
        save_checkpoint(self.state.state_dict(), self.checkpoint_dir / name)

    def log_figures(self, logger: RunLogger) -> None:
        figures = figures_for(self.state.model, self.state.preprocessing, self.data,
                              self.draw_samples, self.cfg.n_samples)
        logger.figures(figures, self.state.step)

    # --- the loop ----------------------------------------------------------------------

    def train_step(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.state
        nll = negative_log_likelihood(state.model, state.preprocessing, batch).mean()
        state.optimizer.zero_grad(set_to_none=True)
        nll.backward()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)
        state.optimizer.step()
        state.scheduler.step()
        return nll.detach(), grad_norm.detach()

    def run(self) -> dict[str, Any]:
        cfg, state, n_dims = self.cfg, self.state, self.data.n_dims
        logger = RunLogger(self.run_dir, purge_step=state.step + 1 if state.step else None)
        first_step = state.step
        window_nll = torch.zeros((), device=self.device)
        window_steps, window_seconds = 0, 0.0
        train_bpd = None  # stays None when a resumed run has no steps left
        if state.step >= cfg.steps:
            log.warning("the run is already at step %d of train.steps=%d; nothing to train. "
                        "Raise train.steps to continue it.", state.step, cfg.steps)
        train_seconds, started = 0.0, time.perf_counter()
        progress = tqdm(total=cfg.steps, initial=first_step, desc="train", unit="step",
                        disable=None, dynamic_ncols=True)
        try:
            with logging_redirect_tqdm(), StopRequest() as stop:
                while state.step < cfg.steps and stop.requested is None:
                    step_start = time.perf_counter()
                    batch = state.batches.next().to(self.device, non_blocking=True)
                    nll, grad_norm = self.train_step(batch)
                    state.step += 1
                    window_nll += nll
                    window_steps += 1
                    progress.update()
                    last = state.step == cfg.steps
                    if state.step % cfg.log_every == 0 or last:
                        train_nll = window_nll.item() / window_steps
                        window_seconds += time.perf_counter() - step_start
                        train_seconds += window_seconds
                        self.stop_if_not_finite(train_nll)
                        train_bpd = bits_per_dim(train_nll, n_dims)
                        logger.scalars({
                            "train/nll": train_nll, "train/bpd": train_bpd,
                            "lr": state.optimizer.param_groups[0]["lr"],
                            "grad_norm": grad_norm.item(),
                            "throughput": window_steps * cfg.batch_size / window_seconds,
                        }, state.step)
                        progress.set_postfix(nll=f"{train_nll:.4f}", bpd=f"{train_bpd:.4f}")
                        window_nll.zero_()
                        window_steps, window_seconds = 0, 0.0
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
                if stop.requested is not None:
                    self.save("last.pt")
                    log.warning("%s at step %d: saved checkpoints/last.pt. Continue with: %s",
                                stop.requested, state.step, self.resume_command)
        finally:
            progress.close()
            logger.close()
        metrics = self.final_metrics(train_bpd, first_step, train_seconds,
                                     time.perf_counter() - started)
        metrics["stopped_by"] = stop.requested
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics

    def stop_if_not_finite(self, train_nll: float) -> None:
        if not math.isfinite(train_nll):
            raise NonFiniteError(
                f"step {self.state.step}: the training loss is {train_nll}. The last "
                f"checkpoint (checkpoints/last.pt) is kept; lower optim.lr or train.grad_clip "
                f"and start again, or resume with: {self.resume_command}")

    def evaluate_and_keep_best(self, logger: RunLogger) -> None:
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
        if self.last_test_nll is not None and self.last_test_nll[0] == self.state.step:
            test_nll = self.last_test_nll[1]
        else:
            test_nll = self.evaluate(self.data.test)
        steps_run = self.state.step - first_step
        metrics: dict[str, Any] = {
            "steps": self.state.step,
            "train_bpd": train_bpd,
            "test_nll": test_nll,
            "test_bpd": bits_per_dim(test_nll, self.data.n_dims),
            "best_test_bpd": self.state.best_test_bpd,
            "wall_s": wall_seconds,
            "train_samples_per_s": steps_run * self.cfg.batch_size / max(train_seconds, 1e-9),
            "params": sum(p.numel() for p in self.state.model.parameters()),
            "device": str(self.device),
        }
        test_nll_true = self.true_test_nll()
        if test_nll_true is not None:
            metrics["test_nll_true"] = test_nll_true
            metrics["test_nll_gap"] = test_nll - test_nll_true
        return metrics
