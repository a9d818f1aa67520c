"""Every range a schema's types cannot express (a width of at least 1, a fraction below 1,
a finite learning rate), in one table beside the schemas, checked on the composed config
before any data is read, a model built or a run folder written.

The schemas catch a value of the wrong type while Hydra composes; this catches a value of
the right type that cannot work, so ``train.batch_size=0`` or ``optim.lr=nan`` is one line
naming the key instead of a traceback minutes later. Checks that need the data (a patch
size that must divide the image) stay with the component that knows the shape.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flowtrain import config as schemas
from flowtrain.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The values a numeric key takes: finite, from ``low`` to ``high`` (the end itself
    left out where ``above_low`` or ``below_high``), or one of ``choices``; also null
    where the schema allows it, and the words in ``words`` ("auto"). ``meaning`` says what
    a boundary value does ("0: none")."""

    low: float | None = None
    high: float | None = None
    above_low: bool = False
    below_high: bool = False
    choices: tuple[int, ...] = ()
    meaning: str = ""
    words: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.choices:
            text = " or ".join(map(str, self.choices))
        elif self.low is not None and self.high is not None:
            text = (
                f"in {'(' if self.above_low else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.below_high else ']'}"
            )
        elif self.low is not None:
            text = f"greater than {self.low:g}" if self.above_low else f"at least {self.low:g}"
        else:
            text = "a finite number"
        text += "".join(f" or {word}" for word in self.words)
        return text + (f" ({self.meaning})" if self.meaning else "")

    def admits(self, value: Any) -> bool:
        if value is None or (isinstance(value, str) and value in self.words):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if (isinstance(value, float) and not math.isfinite(value)) or (
            self.choices and value not in self.choices
        ):
            return False
        if self.low is not None and (value <= self.low if self.above_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.below_high else value <= self.high)


AT_LEAST_1 = Range(low=1)  # a number of things the key names
AT_LEAST_0 = Range(low=0)  # a number that may be none
POSITIVE = Range(low=0, above_low=True)
FRACTION = Range(low=0, high=1, below_high=True)
# NumPy's global generator (the top-level seed) takes 0 .. 2**32 - 1; every seed keeps to it
SEED = Range(low=0, high=2**32 - 1)
SHIFT = Range(
    low=0, high=1, below_high=True, meaning="a fraction of the image's size; Glow's is 0.1"
)
N_VAL = Range(low=0, meaning="0: no validation split, so no best.pt")
LOGIT_ALPHA = Range(low=0, high=0.5, below_high=True, meaning="0: no logit preprocessing")
DROPOUT = FRACTION

_NETWORK = {"n_filters": AT_LEAST_1, "n_blocks": AT_LEAST_0}
_IMAGES = {"n_val": N_VAL, "shift": SHIFT}
_DRAWN = {"n_train": AT_LEAST_1, "n_test": AT_LEAST_1, "n_val": N_VAL, "seed": SEED}
_UNIFORM = {"logit_alpha": LOGIT_ALPHA, "eval_samples": AT_LEAST_1}
_OPTIM = {
    "lr": POSITIVE,
    "weight_decay": AT_LEAST_0,
    "warmup_steps": AT_LEAST_0,
    "warmup_epochs": AT_LEAST_0,
    "min_lr_ratio": Range(low=0, high=1, meaning="of the learning rate"),
}

RANGES: dict[type, dict[str, Range]] = {
    schemas.MixtureCDFConfig: {"n_components": AT_LEAST_1},
    schemas.ARFlowConfig: {
        "n_components": AT_LEAST_1,
        "hidden_features": AT_LEAST_1,
        "hidden_layers": AT_LEAST_0,
        "order": AT_LEAST_0,
    },
    schemas.RealNVPConfig: {
        **_NETWORK,
        "checkerboard_in": AT_LEAST_1,
        "channelwise": AT_LEAST_1,
        "checkerboard_out": AT_LEAST_1,
        "scales": AT_LEAST_1,
    },
    schemas.GlowConfig: {
        **_NETWORK,
        "levels": Range(low=1, words=("auto",)),
        "steps": AT_LEAST_1,
        "weight_y": Range(low=0, meaning="0: no class prediction"),
    },
    schemas.PixelCNNFlowConfig: {**_NETWORK, "n_components": AT_LEAST_1},
    schemas.FlowPlusPlusConfig: {
        "n_filters": AT_LEAST_1,
        "n_blocks": AT_LEAST_1,
        "n_components": AT_LEAST_1,
        "heads": AT_LEAST_1,
        "dropout": DROPOUT,
        "column_in": AT_LEAST_0,
        "channelwise": AT_LEAST_0,
        "column_out": AT_LEAST_0,
    },
    schemas.TarFlowConfig: {
        "patch_size": AT_LEAST_1,
        "width": AT_LEAST_1,
        "blocks": AT_LEAST_1,
        "layers_per_block": AT_LEAST_1,
        "head_dim": AT_LEAST_1,
        "expansion": AT_LEAST_1,
        "max_log_scale": Range(low=0, meaning="0: unbounded, as released"),
        "drop_label": FRACTION,
    },
    schemas.GMM1DConfig: {**_DRAWN, "stds": POSITIVE, "weights": POSITIVE, "means": Range()},
    schemas.Toy2DConfig: {**_DRAWN, "noise": Range(low=0, meaning="null: the set's own")},
    schemas.ArrayConfig: {"n_val": N_VAL},
    schemas.ImageArrayConfig: {**_IMAGES, "levels": Range(low=2)},
    schemas.TorchvisionConfig: {**_IMAGES, "bits": Range(low=1, high=8)},
    schemas.PhotoPatchesConfig: {
        **_IMAGES,
        "size": Range(low=2),
        "n_test": AT_LEAST_1,
        "seed": SEED,
    },
    schemas.ImageFolderConfig: {
        **_IMAGES,
        "size": Range(low=2),
        "n_test": AT_LEAST_0,
        "seed": SEED,
        "channels": Range(choices=(1, 3), meaning="grey or RGB"),
    },
    schemas.ImageNetConfig: {**_IMAGES, "size": Range(choices=(32, 64))},
    schemas.DigitsConfig: {**_IMAGES, "n_test": AT_LEAST_1, "seed": SEED},
    schemas.NoDequantConfig: {},
    schemas.UniformDequantConfig: {**_UNIFORM, "range": Range()},
    schemas.AutoDequantConfig: _UNIFORM,
    schemas.GaussianDequantConfig: {"sigma": POSITIVE, "range": Range()},
    schemas.VariationalDequantConfig: {
        **_UNIFORM,
        **_NETWORK,
        "n_couplings": AT_LEAST_1,
        "context_channels": AT_LEAST_1,
        "n_components": AT_LEAST_1,
        "heads": AT_LEAST_1,
        "dropout": DROPOUT,
    },
    schemas.AdamConfig: {**_OPTIM, "betas": FRACTION},
    schemas.AdamWConfig: {**_OPTIM, "betas": FRACTION},
    schemas.AdamaxConfig: {**_OPTIM, "betas": FRACTION},
    schemas.SGDConfig: {**_OPTIM, "momentum": FRACTION},
    schemas.TrainConfig: {
        "steps": AT_LEAST_0,
        "batch_size": AT_LEAST_1,
        "eval_every": AT_LEAST_1,
        "sample_every": AT_LEAST_1,
        "checkpoint_every": AT_LEAST_1,
        "log_every": AT_LEAST_1,
        "eval_batch_size": AT_LEAST_1,
        "n_samples": AT_LEAST_1,
        "max_nonfinite": AT_LEAST_1,
        "sample_temperature": POSITIVE,
        "grad_clip": Range(low=0, meaning="0: no clipping"),
        "ema_decay": Range(low=0, high=1, below_high=True, meaning="0: no average"),
        "dist_timeout_s": Range(low=1, high=1e9, meaning="seconds; 7200 by default"),
    },
    schemas.SampleConfig: {
        "n": AT_LEAST_1,
        "temperature": POSITIVE,
        "seed": SEED,
        "interpolation_steps": Range(low=2),
        "interpolation_pairs": AT_LEAST_0,
        "guidance": Range(low=0, meaning="0: no guidance"),
    },
    schemas.EvalConfig: {},
    schemas.Config: {"seed": SEED, "threads": Range(low=1, meaning="null: torch's default")},
}

# The top level's sections with a schema of their own; the groups' options are found by
# their _target_ (SCHEMAS), since a group holds whichever option was chosen.
_SECTIONS: dict[str, type] = {
    "train": schemas.TrainConfig,
    "sample": schemas.SampleConfig,
    "eval": schemas.EvalConfig,
}


def schema_of(group: str, node: Any) -> type | None:
    """The schema of the option chosen in ``group``, by its _target_; None for a class of
    the user's own, whose keys flowtrain does not know."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    for schema in schemas.SCHEMAS.get(group, {}).values():
        if schema._target_ == target:
            return schema
    return None


def sections(cfg: DictConfig) -> Iterator[tuple[str, type]]:
    """(key prefix, schema) of every part of the config this module knows."""
    yield "", schemas.Config
    for key, schema in _SECTIONS.items():
        if key in cfg:
            yield f"{key}.", schema
    for group in schemas.SCHEMAS:
        schema = schema_of(group, cfg.get(group))
        if schema is not None:
            yield f"{group}.", schema


def range_errors(cfg: DictConfig) -> list[str]:
    """One line for each key of ``cfg`` whose value is out of its range."""
    errors = []
    for prefix, schema in sections(cfg):
        node = OmegaConf.select(cfg, prefix[:-1]) if prefix else cfg
        for key, allowed in RANGES[schema].items():
            if key not in node:  # absent, or ??? (a missing value is not in its node)
                continue
            value = node[key]
            values = list(value) if isinstance(value, (ListConfig, list)) else [value]
            bad = [item for item in values if not allowed.admits(item)]
            if bad:
                shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
                each = "each value of " if isinstance(value, ListConfig) else ""
                finite = (
                    "finite and "
                    if any(isinstance(item, float) and not math.isfinite(item) for item in bad)
                    else ""
                )
                errors.append(
                    f"{prefix}{key}={shown}: {each}{prefix}{key} must be "
                    f"{finite}{allowed.describe()}"
                )
    return errors


def check_ranges(cfg: DictConfig) -> None:
    """Refuse a config with any key out of its range, naming every such key at once."""
    errors = range_errors(cfg)
    if errors:
        raise ConfigError("; ".join(errors))


class RangeCheck(Callback):
    """Hydra calls this once the config is composed and before it makes the run folder:
    a value out of range ends the command there, with nothing written. A sweep is checked
    before its first job, with every value it sweeps a key through; each job is checked
    again by ``flowtrain.train`` (a sweeper such as Optuna picks values as it goes)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _stop_on(lambda: range_errors(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _stop_on(lambda: range_errors(config) + swept_range_errors(config))


def _stop_on(find_errors: Callable[[], list[str]]) -> None:
    """Exit with the errors ``find_errors`` finds; Hydra would turn a callback's exception
    into a warning and run the job. What cannot be read yet (an interpolation of Hydra's
    runtime keys) is left to the job's own check."""
    try:
        errors = find_errors()
    except OmegaConfBaseException:
        return
    if errors:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one rank speaks
            print(f"Error: {'; '.join(errors)}", file=sys.stderr, flush=True)
        sys.exit(2)


def swept_range_errors(config: DictConfig) -> list[str]:
    """The range errors of each value a -m sweep gives a key (optim.lr=1e-3,0): Hydra
    composes a sweep's base config without them. Swept config-group options
    (model=realnvp,glow) are left to each job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    errors = []
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        key = override.key_or_group
        if not override.is_sweep_override() or OmegaConf.select(config, key) is None:
            continue
        for value in override.sweep_iterator():  # typed as Hydra parses them
            trial = config.copy()
            try:
                OmegaConf.update(trial, key, value, merge=True)
            except OmegaConfBaseException:
                continue  # a value of the wrong type: the job says so
            errors += [line for line in range_errors(trial) if line.startswith(f"{key}=")]
    return errors


def unranged_keys() -> list[str]:
    """Numeric keys of a schema with no range here: a key added to a schema must join the
    table (a test keeps this empty)."""
    missing = []
    for schema, ranges in RANGES.items():
        for item in fields(schema):
            kind = str(item.type)
            if (
                any(word in kind for word in ("int", "float"))
                and "Enum" not in kind
                and item.name not in ranges
                and item.name != "_target_"
            ):
                missing.append(f"{schema.__name__}.{item.name}")
    return missing
