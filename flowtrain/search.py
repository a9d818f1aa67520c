"""``hydra/sweeper=optuna``: Hydra's Optuna sweeper (the ``optuna`` extra) with flowtrain's
preset study. Each trial is a run; its return value, the best validation bits/dim (nats
per point for continuous data), is what the study minimises. The preset searches the
learning rate and the width of whichever model is chosen; any of it can be overridden:
``hydra.sweeper.n_trials=50``, ``hydra.sweeper.params.optim.lr='interval(1e-4,1e-3)'``.

The preset replaces the plugin's own ``hydra/sweeper/optuna`` node in Hydra's ConfigStore
(a subclass: the same keys, other defaults). A YAML option of that name cannot do it: Hydra
refuses a YAML file that shares its name with a schema carrying a defaults list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

# The learning rate, log-uniform from a decade below the image regimes' 1e-3 (conf/train/)
# to the point regime's 1e-2: the range both kinds of data train in.
LEARNING_RATE = "tag(log, interval(1e-4, 1e-2))"
# The width key of each model that has one, and the widths tried: half, the same and
# twice the schema default (flowtrain.config); mixture_cdf has none.
WIDTHS = {"n_filters": (16, 32, 64), "hidden_features": (64, 128, 256),
          "width": (32, 64, 128)}  # tarflow's: multiples of its head_dim of 32


def suggest_width(config: DictConfig, trial: Any) -> None:
    """The study's width parameter for the chosen model (``custom_search_space``), unless
    the command line fixes or searches it already."""
    for key, widths in WIDTHS.items():
        name = f"model.{key}"
        if OmegaConf.select(config, name) is None:
            continue
        if name not in trial.params and name not in trial.user_attrs:
            trial.suggest_categorical(name, list(widths))


def register_optuna_preset() -> None:
    """Put the preset in place of the plugin's node, when the plugin is installed."""
    try:
        from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    except ImportError:  # without the extra, hydra/sweeper=optuna names the missing plugin
        return
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    # Hydra's plugin discovery executes every plugin module again, the plugin's node
    # included: discover now (once per process; every Hydra run does it anyway), so that
    # the preset stored below is not overwritten later.
    Plugins.instance()
    # Optuna's storage layer (alembic) logs every plugin it sets up at INFO when the
    # sweeper imports it: twenty lines of noise above the study's own.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    @dataclass
    class FlowtrainOptunaSweeperConf(OptunaSweeperConf):
        # OmegaConf reads these annotations: Optional, not X | None
        study_name: Optional[str] = "flowtrain"  # noqa: UP045
        n_trials: int = 20
        n_jobs: int = 1  # trials run one at a time unless the launcher is parallel
        params: Optional[dict[str, str]] = field(  # noqa: UP045
            default_factory=lambda: {"optim.lr": LEARNING_RATE})
        custom_search_space: Optional[str] = "flowtrain.search.suggest_width"  # noqa: UP045

    ConfigStore.instance().store(group="hydra/sweeper", name="optuna",
                                 node=FlowtrainOptunaSweeperConf, provider="flowtrain")
