"""The ``flowtrain`` command: compose the config with Hydra, build the run, train it."""

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

from flowtrain.config import config_dir, register_configs
from flowtrain.errors import ConfigError, user_error_in

log = logging.getLogger("flowtrain")

register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one run; returns its final test bits/dim (what a sweeper would minimise)."""
    try:
        return train(cfg)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or "a key"
        log.error("%s has no value; set it on the command line (%s=...).", key, key)
    except Exception as error:
        user_error = user_error_in(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
    sys.exit(2)


def resume_command(task_overrides: list[str], run_dir: Path) -> str:
    """The command that continues this run: its own overrides, its folder, resume=true."""
    kept = [item for item in task_overrides
            if not item.startswith(("resume=", "hydra.run.dir=", "+resume="))]
    words = ["flowtrain", *kept, f"hydra.run.dir={run_dir}", "resume=true"]
    return " ".join(shlex.quote(word) for word in words)


def train(cfg: DictConfig) -> float:
    import torch  # heavy imports after Hydra has parsed argv

    from flowtrain.build import build_trainer
    from flowtrain.training.distributed import Ranks, leave_process_group
    from flowtrain.training.runtime import cpu_threads

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    threads = cpu_threads(cfg.threads, hydra_config.launcher)
    if threads is not None:
        torch.set_num_threads(threads)
        log.info("torch uses %d CPU thread(s)", threads)
    ranks = Ranks.from_environment()
    if ranks.distributed and hydra_config.mode == RunMode.MULTIRUN:
        raise ConfigError("-m (a sweep) and torchrun do not mix: every process would run "
                          "the whole sweep. Start one torchrun job per sweep point.")
    if not ranks.is_main:  # rank 0 speaks for the run; the others only warn
        logging.getLogger("flowtrain").setLevel(logging.WARNING)
    try:
        trainer = build_trainer(cfg, run_dir,
                                resume_command(hydra_config.overrides.task, run_dir), ranks)
        log.info("run folder: %s%s", run_dir,
                 f" ({ranks.world_size} processes)" if ranks.distributed else "")
        metrics = trainer.run()
    finally:
        leave_process_group()
    if not ranks.is_main:
        return math.nan
    log.info("done: %s", json.dumps(metrics))
    log.info("test: %.4f bits/dim (%.4f nats per example; best %.4f bits/dim) after %d steps; "
             "metrics.json, checkpoints/ and tb/ are in %s", metrics["test_bpd"],
             metrics["test_nll"], metrics["best_test_bpd"], metrics["steps"], run_dir)
    return metrics["test_bpd"]


if __name__ == "__main__":
    main()
