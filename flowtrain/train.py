"""The ``flowtrain`` command: compose the config with Hydra, build the run, train it."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flowtrain.config import config_dir, register_configs

log = logging.getLogger("flowtrain")

register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one run; returns its final test bits/dim (what a sweeper would minimise)."""
    from flowtrain.build import build_trainer  # heavy imports after Hydra parses argv

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    trainer = build_trainer(cfg, run_dir)
    log.info("run folder: %s", run_dir)
    metrics = trainer.run()
    path = trainer.run_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("done: %s", json.dumps(metrics))
    return metrics["test_bpd"]


if __name__ == "__main__":
    sys.exit(main())
