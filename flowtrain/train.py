"""The ``flowtrain`` command: compose the config with Hydra, build the run, train it."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from flowtrain.config import config_dir, register_configs
from flowtrain.errors import user_error_in

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
    from flowtrain.build import build_trainer  # heavy imports after Hydra has parsed argv

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    trainer = build_trainer(cfg, run_dir, resume_command(hydra_config.overrides.task, run_dir))
    log.info("run folder: %s", run_dir)
    metrics = trainer.run()
    log.info("done: %s", json.dumps(metrics))
    log.info("test: %.4f bits/dim (%.4f nats per example; best %.4f bits/dim) after %d steps; "
             "metrics.json, checkpoints/ and tb/ are in %s", metrics["test_bpd"],
             metrics["test_nll"], metrics["best_test_bpd"], metrics["steps"], run_dir)
    return metrics["test_bpd"]


if __name__ == "__main__":
    main()
