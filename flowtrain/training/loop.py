"""One training loop for every model: batch -> dequantize -> log_prob -> mean NLL -> step,
then whatever periodic work is due (log, evaluate on validation, pictures, checkpoint).
The test split is measured once, at the end, for the last model and for best.pt."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from flowtrain.config import TrainConfig
from flowtrain.data.base import FlowData
from flowtrain.errors import CheckpointError, NonFiniteError
from flowtrain.likelihood import negative_log_likelihood
from flowtrain.sweeps import result_keys
from flowtrain.training.checkpoint import (
    all_finite,
    evaluated_weights,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
)
from flowtrain.training.distributed import DataParallelFlow, Ranks
from flowtrain.training.evaluation import (
    evaluate_split,
    evaluation_mode,
    labels_to_score,
    mean_nll,
    split_metrics,
)
from flowtrain.training.figures import figures_for
from flowtrain.training.logger import RunLogger
from flowtrain.training.runtime import autocast
from flowtrain.training.state import TrainingState
from flowtrain.training.stop import StopRequest

log = logging.getLogger(__name__)


@dataclass
class TrainingClock:
    """Seconds spent in training steps alone (not evaluations, pictures or saves): in the
    current log window, for its throughput, and in all."""

    window_seconds: float = 0.0
    window_steps: int = 0
    total_seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.window_seconds += seconds
        self.window_steps += 1
        self.total_seconds += seconds

    def take_throughput(self, batch_size: int) -> float:
        """Examples per second over the window, which then starts again."""
        rate = self.window_steps * batch_size / max(self.window_seconds, 1e-9)
        self.window_seconds, self.window_steps = 0.0, 0
        return rate


class Trainer:
    """Runs the loop and writes what every run leaves: tb/, checkpoints/, metrics.json."""

    def __init__(self, state: TrainingState, data: FlowData, cfg: TrainConfig,
                 run_dir: Path, device: torch.device, seed: int, resume_command: str = "",
                 ranks: Ranks | None = None, hyperparameters: dict[str, Any] | None = None):
        self.hyperparameters = dict(hyperparameters or {})
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
        self.eager_pass_due = cfg.compile
        # What a training step calls log_prob on: the model, or the model inside DDP.
        self.trained = (DataParallelFlow(state.model, device) if self.ranks.distributed
                        else state.model)
        self.last_val_nll: tuple[int, float] | None = None  # (step, value)
        self.train_nll: float | None = None  # None while no step of this process counted

    # --- measuring -------------------------------------------------------------------

    def evaluate(self, split: str) -> float:
        """Mean NLL (nats per example) over a split, as ``task=eval`` measures it (given
        the labels, for a class-conditional model)."""
        model = self.state.evaluated[0]
        return mean_nll(*self.state.evaluated, self.data.split(split),
                        batch_size=self.cfg.eval_batch_size, device=self.device,
                        seed=self.seed, labels=labels_to_score(model, self.data, split))

    @torch.no_grad()
    def draw_samples(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """n samples in data space at ``train.sample_temperature`` (of the classes
        ``labels``, for a class-conditional model), from a generator of their own so that
        drawing them does not move the training RNG (a resumed run must see the same
        random numbers)."""
        generator = torch.Generator(self.device).manual_seed(self.seed + self.state.step)
        model, preprocessing = self.state.evaluated
        context = None if labels is None else labels.to(self.device)
        with evaluation_mode(model, preprocessing):
            return preprocessing.sample(model, n, self.cfg.sample_temperature, generator,
                                        context)

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
        figures = figures_for(*self.state.evaluated, self.data, self.draw_samples,
                              self.cfg.n_samples, self.cfg.sample_classes)
        logger.figures(figures, self.state.step)

    # --- the loop ----------------------------------------------------------------------

    def train_step(self, batch: torch.Tensor, labels: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """One step (on the batch's ``labels`` too, for a class-conditional model); its
        gradient norm. A non-finite loss or gradient norm skips the update (the schedule
        still advances, so the learning rate stays a function of the step)."""
        state = self.state
        if self.eager_pass_due:
            self.initialize_eagerly(batch, labels)
        with autocast(self.device, self.cfg.precision):
            nll = negative_log_likelihood(self.trained, state.preprocessing, batch,
                                          keep=self.batch_slice, context=labels).mean()
        # what a model adds to its loss beyond -log p (Glow's class prediction); the
        # logged and reported numbers stay the likelihood's
        penalty = state.model.training_penalty()
        state.optimizer.zero_grad(set_to_none=True)
        (nll if penalty is None else nll + penalty.mean()).backward()
        self.ranks.average_gradients(self.dequant_parameters)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)
        # The global batch's loss: every rank then makes the same skip decision.
        nll = self.ranks.mean(nll)
        # One host sync per step: skipping must be decided before the optimizer moves.
        if bool(torch.isfinite(nll) & torch.isfinite(grad_norm)):
            state.optimizer.step()
            state.update_average()
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

    def initialize_eagerly(self, batch: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Before a compiled model's first step: one training-mode forward pass outside the
        graph, on this step's own dequantization noise (the random state is put back), so
        that data-dependent initializations such as ActNorm's happen here. The graph traced
        next then holds no branch on them: a branch on a tensor value breaks the graph,
        and a break inside the loop over the transforms left every transform compiled on
        its own, with a recompile per shape."""
        devices = [self.device] if self.device.type == "cuda" else []
        with (torch.random.fork_rng(devices=devices), torch.no_grad(),
              autocast(self.device, self.cfg.precision)):
            y, _ = self.state.preprocessing(batch)
            context = None if labels is None else labels[self.batch_slice]
            # forward: not the compiled call
            self.state.model.forward(y[self.batch_slice], context)
        self.eager_pass_due = False

    def count_nonfinite(self, nll: float, grad_norm: float) -> None:
        count = self.state.nonfinite
        count.total += 1
        count.in_a_row += 1
        if self.ranks.is_main:  # every rank skips the same step; rank 0 says so
            log.warning("step %d: skipped (loss %s, gradient norm %s); %d non-finite in a "
                        "row", self.state.step + 1, nll, grad_norm, count.in_a_row)
        if count.in_a_row >= self.cfg.max_nonfinite:
            raise NonFiniteError(
                f"step {self.state.step + 1}: {count.in_a_row} steps in a row had a NaN or "
                f"infinite loss or gradient norm (train.max_nonfinite={self.cfg.max_nonfinite})"
                f". The last checkpoint (checkpoints/last.pt) holds finite weights; lower "
                f"optim.lr (now {self.state.optimizer.param_groups[0]['lr']:g}) or "
                f"train.grad_clip and start again, or resume with: {self.resume_command}")

    def due(self, every: int) -> bool:
        """Whether periodic work done ``every`` steps is due now (always at the last step)."""
        return self.state.step % every == 0 or self.state.step == self.cfg.steps

    def run(self) -> dict[str, Any]:
        """Train to ``train.steps`` (or a stop request), then write metrics.json (with the
        test split measured, when the run finished); returns the metrics (empty on ranks
        other than 0)."""
        cfg, state = self.cfg, self.state
        main = self.ranks.is_main  # rank 0 alone writes; the other ranks only train
        if main:
            for partial in remove_partial_writes(self.checkpoint_dir):
                log.info("removed %s, an unfinished write from a run that was killed",
                         partial.name)
        if main and self.data.val is None:
            log.info("no validation split (data.n_val=0): no evaluation during training and "
                     "no best.pt; the test split is measured at the end")
        if state.step >= cfg.steps:
            log.warning("the run is already at step %d of train.steps=%d; nothing to train. "
                        "Raise train.steps to continue it.", state.step, cfg.steps)
        first_step, started, clock = state.step, time.perf_counter(), TrainingClock()
        with RunLogger(self.run_dir, purge_step=state.step + 1 if state.step else None,
                       enabled=main) as logger:
            stopped_by = self.train(logger, clock)
            if not main:
                self.ranks.wait_for_all()  # until rank 0 has written the run's results
                return {}
            metrics = self.final_metrics(first_step, clock.total_seconds,
                                         time.perf_counter() - started,
                                         finished=stopped_by is None)
            metrics["stopped_by"] = stopped_by
            logger.scalars(as_tags("test", {key: value for key, value in metrics.items()
                                            if isinstance(value, float)}), state.step)
            self.log_hyperparameters(logger, metrics)
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        self.ranks.wait_for_all()
        return metrics

    def train(self, logger: RunLogger, clock: TrainingClock) -> str | None:
        """The steps, each followed by the periodic work that is due. Ctrl-C or SIGTERM
        (on any rank) ends it at a step boundary with a checkpoint; returns what stopped
        it, None when it reached ``train.steps``."""
        cfg, state = self.cfg, self.state
        stopped_by = None
        with (tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step",
                   disable=None if self.ranks.is_main else True, dynamic_ncols=True)
              as progress, logging_redirect_tqdm(), StopRequest() as stop):
            while state.step < cfg.steps and stopped_by is None:
                step_start = time.perf_counter()
                grad_norm = self.train_step(*state.batches.next_labelled(self.device))
                clock.add(time.perf_counter() - step_start)
                progress.update()
                if self.due(cfg.log_every):
                    self.log_training(logger, progress, grad_norm, clock)
                if self.due(cfg.eval_every):
                    self.evaluate_and_select(logger)
                if self.due(cfg.sample_every):
                    self.log_figures(logger)
                if self.due(cfg.checkpoint_every):
                    # Events first: a checkpoint at step N never exists without the curves
                    # up to N, even when the process is killed right after writing it.
                    logger.flush()
                    self.save("last.pt")
                if self.ranks.any(stop.requested is not None, self.device):
                    stopped_by = stop.requested or "another rank"
            if stopped_by is not None:
                logger.flush()
                self.save("last.pt")
                if self.ranks.is_main:  # the rank that saved says so, once
                    log.warning("%s at step %d: saved checkpoints/last.pt. Continue with: %s",
                                stopped_by, state.step, self.resume_command)
        return stopped_by

    def log_training(self, logger: RunLogger, progress: tqdm, grad_norm: torch.Tensor,
                     clock: TrainingClock) -> None:
        """The log window's loss (when any step in it counted), learning rate, gradient
        norm and throughput."""
        state = self.state
        scalars = {"lr": state.optimizer.param_groups[0]["lr"],
                   "grad_norm": grad_norm.item(),
                   "throughput": clock.take_throughput(self.cfg.batch_size),
                   "nonfinite_steps": state.nonfinite.total}
        train_nll = state.window.take_mean()
        if train_nll is not None:  # None: every step since the last was skipped
            self.train_nll = train_nll
            train = as_tags("train", split_metrics("train", train_nll, self.data))
            scalars |= train
            progress.set_postfix({tag.removeprefix("train/"): f"{value:.4f}"
                                  for tag, value in train.items()})
        logger.scalars(scalars, state.step)

    def log_hyperparameters(self, logger: RunLogger, metrics: dict[str, Any]) -> None:
        """What identifies the run and its final numbers, for comparing a sweep in
        TensorBoard's HParams tab."""
        results = {f"hparams/{key}": metrics[key]
                   for key in (*result_keys(metrics), "test_bpd_iw")
                   if isinstance(metrics.get(key), float)}
        logger.hyperparameters(self.hyperparameters, results, self.state.step)

    def evaluate_and_select(self, logger: RunLogger) -> None:
        """Validation NLL now; a new lowest saves best.pt. Without a validation split,
        nothing: the test split is not looked at before the end."""
        if not self.ranks.is_main or self.data.val is None:
            return
        state = self.state
        val_nll = self.evaluate("val")
        self.last_val_nll = (state.step, val_nll)
        val = split_metrics("val", val_nll, self.data)
        logger.scalars(as_tags("val", val), state.step)
        log.info("step %d: val %.5f %s", state.step, val[f"val_{self.data.reported_as}"],
                 self.data.unit)
        if val_nll < state.best_val_nll:
            state.best_val_nll, state.best_step = val_nll, state.step
            self.save("best.pt")

    def test_nll_at_best(self, test_nll: float) -> float | None:
        """Test NLL of best.pt's weights (None without a best.pt): reused when best.pt is
        the last model, else loaded into the evaluated modules for this measurement only
        (the weights there now wait on the CPU)."""
        state = self.state
        if state.best_step < 0:
            return None
        if state.best_step == state.step:
            return test_nll
        path = self.checkpoint_dir / "best.pt"
        try:
            saved = load_checkpoint(path)
        except CheckpointError as error:
            log.warning("test of best.pt not measured: %s", error)
            return None
        if saved.get("step") != state.best_step:  # e.g. written by a killed run, not resumed to
            log.warning("test of best.pt not measured: %s holds step %s, not the best step "
                        "%d this run knows", path, saved.get("step"), state.best_step)
            return None
        modules = dict(zip(("model", "preprocessing"), state.evaluated, strict=True))
        current = {name: {key: value.detach().to("cpu", copy=True)
                          for key, value in module.state_dict().items()}
                   for name, module in modules.items()}
        weights = evaluated_weights(saved)
        try:
            for name, module in modules.items():
                module.load_state_dict(weights[name])
            return self.evaluate("test")
        finally:
            for name, module in modules.items():
                module.load_state_dict(current[name])

    def final_metrics(self, first_step: int, train_seconds: float, wall_seconds: float,
                      finished: bool) -> dict[str, Any]:
        """The run's numbers: best.pt's step and validation result, the last model's
        validation result, and how the run went; for a ``finished`` run also the test
        results of the last model and of best.pt, measured here, once. A run stopped early
        (to be resumed) leaves the test split alone."""
        state, data = self.state, self.data
        metrics: dict[str, Any] = {"steps": state.step, "result_unit": data.reported_as}
        if self.train_nll is not None:
            metrics |= split_metrics("train", self.train_nll, data)
        known = self.last_val_nll
        if known is not None and known[0] == state.step:
            metrics |= split_metrics("val", known[1], data)
        elif data.val is not None and finished:
            metrics |= split_metrics("val", self.evaluate("val"), data)
        if state.best_step >= 0:
            metrics |= split_metrics("best_val", state.best_val_nll, data)
            metrics["best_step"] = state.best_step
        if finished:
            metrics |= evaluate_split(*state.evaluated, data, "test",
                                      batch_size=self.cfg.eval_batch_size,
                                      device=self.device, seed=self.seed)
            test_at_best = self.test_nll_at_best(metrics["test_nll"])
            if test_at_best is not None:
                metrics |= {f"{key}_at_best": value
                            for key, value in split_metrics("test", test_at_best, data).items()}
        steps_run = state.step - first_step
        return metrics | {
            "wall_s": wall_seconds,
            "train_samples_per_s": steps_run * self.cfg.batch_size / max(train_seconds, 1e-9),
            "params": sum(p.numel() for p in state.model.parameters()),
            "dequant_params": sum(p.numel() for p in self.dequant_parameters),
            "device": str(self.device),
            "nonfinite_steps": state.nonfinite.total,
            **({"data_version": data.version} if data.version else {}),
            **({"n_classes": state.model.n_classes} if state.model.n_classes else {}),
        }


def as_tags(split: str, metrics: dict[str, float]) -> dict[str, float]:
    """{"val_nll": 1.2, "val_bpd": 0.9} -> {"val/nll": 1.2, "val/bpd": 0.9}: a split's
    metrics as its TensorBoard tags."""
    prefix = f"{split}_"
    return {f"{split}/{key.removeprefix(prefix)}": value for key, value in metrics.items()
            if key.startswith(prefix)}
