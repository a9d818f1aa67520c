"""The ``flowtrain`` command: compose the config with Hydra, then train a run, or evaluate
or sample from a checkpoint (``task=eval|sample``, in flowtrain.tasks)."""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from flowtrain.checkpoint_config import RECORDED_GROUPS, with_checkpoint_choices
from flowtrain.config import Task, config_dir, register_configs
from flowtrain.config_ranges import check_ranges
from flowtrain.data.base import UNIT_NAMES
from flowtrain.errors import ConfigError, NonFiniteError, user_error_in
from flowtrain.sweeps import check_sweep_selects, objective_key, result_unit, run_identity
from flowtrain.training.run_lock import RunFolderBusy, run_dir_named_in, run_folder_lock

log = logging.getLogger("flowtrain")

register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def run(cfg: DictConfig) -> float | None:
    """Train one run, or evaluate or sample from a checkpoint; returns what a sweeper
    minimises: a run's best validation result (bits/dim, or nats per point for continuous
    data; None without a validation split), eval's result, None after sampling."""
    try:
        return run_task(cfg)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or "a key"
        log.error("%s has no value; set it on the command line (%s=...).", key, key)
    except Exception as error:
        user_error = user_error_in(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
        if (isinstance(user_error, NonFiniteError)
                and HydraConfig.get().mode == RunMode.MULTIRUN):
            # One diverged job (a learning rate too high) is a result of the sweep, the
            # worst one: the other jobs and an Optuna study go on.
            log.error("this job diverged; the sweep goes on, counting it as inf")
            return math.inf
    sys.exit(2)


def main() -> None:
    """The ``flowtrain`` command. For task=eval|sample, the checkpoint's own model, data and
    dequant options are named first, so their keys compose (data.root=... on a CIFAR-10
    checkpoint) as they did in training. A training run in a folder it names
    (``hydra.run.dir=...``) takes the folder's lock before Hydra writes its config and log
    there: a second writer stops before touching anything."""
    sys.argv = with_checkpoint_choices(sys.argv)
    folder = run_dir_named_in(sys.argv)
    if folder is None:
        run()
        return
    try:
        with run_folder_lock(folder, logging_ready=False):
            run()
    except RunFolderBusy as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)


def run_task(cfg: DictConfig) -> float | None:
    check_ranges(cfg)  # a sweep's job: its own values (a single run's passed RangeCheck)
    task = Task(cfg.task)
    hydra_config = HydraConfig.get()
    if task is Task.train:
        if cfg.ckpt is not None:
            raise ConfigError("ckpt= is read by task=eval and task=sample; to continue "
                              "training from a checkpoint use resume=PATH.")
        return train(cfg)
    from flowtrain.tasks import run_checkpoint_task
    from flowtrain.training.distributed import Ranks

    if Ranks.from_environment().distributed:
        raise ConfigError(f"task={task.value} runs in one process; start it without torchrun.")
    use_cpu(cfg.threads, hydra_config)
    return run_checkpoint_task(cfg, Path(hydra_config.runtime.output_dir),
                               list(hydra_config.overrides.task))


def use_cpu(requested: int | None, hydra_config: DictConfig) -> None:
    """The CPU threads torch uses (shared out between parallel sweep jobs), with subnormal
    floats flushed to zero."""
    import torch

    from flowtrain.training.runtime import cpu_threads, flush_subnormals

    flush_subnormals()
    threads = cpu_threads(requested, hydra_config.launcher)
    if threads is not None:
        torch.set_num_threads(threads)
        log.info("torch uses %d CPU thread(s)", threads)


def resume_command(task_overrides: list[str], run_dir: Path, processes: int = 1,
                   nodes: int = 1) -> str:
    """The command that continues this run: its own overrides, its folder, resume=true;
    under torchrun, with as many processes on as many nodes (where a multi-node job adds
    its own rendezvous options)."""
    kept = [item for item in task_overrides
            if not item.startswith(("resume=", "hydra.run.dir=", "+resume="))]
    launcher = []
    if processes * nodes > 1:
        launcher = ["torchrun", *([f"--nnodes={nodes}"] if nodes > 1 else []),
                    f"--nproc_per_node={processes}", "-m"]
    words = [*launcher, "flowtrain", *kept, f"hydra.run.dir={run_dir}", "resume=true"]
    return " ".join(shlex.quote(word) for word in words)


def train(cfg: DictConfig) -> float | None:
    from flowtrain.build import build_trainer  # heavy imports after Hydra has parsed argv
    from flowtrain.training.distributed import Ranks, leave_process_group

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    use_cpu(cfg.threads, hydra_config)
    ranks = Ranks.from_environment()
    if ranks.distributed and hydra_config.mode == RunMode.MULTIRUN:
        raise ConfigError("-m (a sweep) and torchrun do not mix: every process would run "
                          "the whole sweep. Start one torchrun job per sweep point.")
    if hydra_config.mode == RunMode.MULTIRUN:
        check_sweep_selects(cfg)  # a job of its own data.n_val, e.g. -m data.n_val=0,100
    ranks.batch_slice(cfg.train.batch_size)  # an uneven split is refused before any work
    if not ranks.is_main:  # rank 0 speaks for the run; the others only warn
        logging.getLogger("flowtrain").setLevel(logging.WARNING)
    try:
        # rank 0 writes the folder; a lock taken in main() is not taken twice
        with run_folder_lock(run_dir, hold=ranks.is_main):
            choices = dict(hydra_config.runtime.choices)
            overrides = list(hydra_config.overrides.task)
            continue_with = resume_command(overrides, run_dir, ranks.local_world_size,
                                           ranks.nodes)
            trainer = build_trainer(cfg, run_dir, continue_with, ranks,
                                    {group: choices.get(group) for group in RECORDED_GROUPS},
                                    hyperparameters=run_identity(cfg, choices, overrides))
            log.info("run folder: %s%s", run_dir,
                     f" ({ranks.world_size} processes)" if ranks.distributed else "")
            with ranks.peers_explained(trainer.resume_command):
                metrics = trainer.run()
    finally:
        leave_process_group()
    if not ranks.is_main:
        return math.nan
    log.info("done: %s", json.dumps(metrics))
    log.info("%s after %d steps; metrics.json, checkpoints/ and tb/ are in %s",
             result_line(metrics), metrics["steps"], run_dir)
    objective = objective_key(metrics)
    return None if objective is None else metrics[objective]


def result_line(metrics: dict) -> str:
    """"best val 3.9000 bits/dim at step 900: test 3.9100; last model: val 3.9200, test
    3.9300 bits/dim", in the unit that suits the data."""
    per_dim = result_unit(metrics)
    unit = UNIT_NAMES[per_dim]
    if metrics.get("stopped_by"):
        best = metrics.get(f"best_val_{per_dim}")
        return (f"stopped; the test split is measured when the run finishes (best val so "
                f"far: {'-' if best is None else f'{best:.4f} {unit}'})")
    test = f"test {metrics[f'test_{per_dim}']:.4f} {unit}"
    if "best_step" not in metrics:
        return f"{test} (no validation split, so no best.pt)"
    at_best = metrics.get(f"test_{per_dim}_at_best")
    val = metrics.get(f"val_{per_dim}")
    return (f"best val {metrics[f'best_val_{per_dim}']:.4f} {unit} at step "
            f"{metrics['best_step']}: test {'-' if at_best is None else f'{at_best:.4f}'}; "
            f"last model: {'' if val is None else f'val {val:.4f}, '}{test}")


if __name__ == "__main__":
    main()
