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
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from flowtrain import config as schemas
from flowtrain.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The values a numeric key takes: finite, from ``low`` to ``high`` (either end left
    out when ``open`` names it), or one of ``choices``; also null where the schema allows
    it, and the words in ``words`` ("auto"). ``meaning`` says what a boundary value does
    ("0: none")."""

    low: float | None = None
    high: float | None = None
    open: str = ""  # "low", "high" or "both": that end is excluded
    choices: tuple[int, ...] = ()
    meaning: str = ""
    words: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.choices:
            text = " or ".join(map(str, self.choices))
        elif self.low is not None and self.high is not None:
            text = (f"in {'(' if self._open('low') else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self._open('high') else ']'}")
        elif self.low is not None:
            text = f"greater than {self.low:g}" if self._open("low") else f"at least {self.low:g}"
        else:
            text = "a finite number"
        text += "".join(f" or {word}" for word in self.words)
        return text + (f" ({self.meaning})" if self.meaning else "")

    def _open(self, end: str) -> bool:
        return self.open in (end, "both")

    def admits(self, value: Any) -> bool:
        if value is None or (isinstance(value, str) and value in self.words):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.choices and value not in self.choices):
            return False
        if self.low is not None and (value <= self.low if self._open("low")
                                     else value < self.low):
            return False
        return self.high is None or (value < self.high if self._open("high")
                                     else value <= self.high)


COUNT = Range(low=1)  # a number of things the key names: at least one
SOME = Range(low=0)  # a number that may be none
POSITIVE = Range(low=0, open="low")
FRACTION = Range(low=0, high=1, open="high")
SEED = Range(low=0, meaning="NumPy's generators take no negative seed")
SHIFT = Range(low=0, high=1, open="high", meaning="a fraction of the image's size; Glow's is 0.1")
VALIDATION = Range(low=0, meaning="0: no validation split, so no best.pt")
LOGIT_ALPHA = Range(low=0, high=0.5, open="high", meaning="0: no logit preprocessing")
DROPOUT = FRACTION

_NETWORK = {"n_filters": COUNT, "n_blocks": SOME}
_IMAGES = {"n_val": VALIDATION, "shift": SHIFT}
_DRAWN = {"n_train": COUNT, "n_test": COUNT, "n_val": VALIDATION, "seed": SEED}
_UNIFORM = {"logit_alpha": LOGIT_ALPHA, "eval_samples": COUNT}
_OPTIM = {"lr": POSITIVE, "weight_decay": SOME, "warmup_steps": SOME, "warmup_epochs": SOME,
          "min_lr_ratio": Range(low=0, high=1, meaning="of the learning rate")}

RANGES: dict[type, dict[str, Range]] = {
    schemas.MixtureCDFConfig: {"n_components": COUNT},
    schemas.ARFlowConfig: {"n_components": COUNT, "hidden_features": COUNT,
                           "hidden_layers": SOME, "order": SOME},
    schemas.RealNVPConfig: {**_NETWORK, "checkerboard_in": COUNT, "channelwise": COUNT,
                            "checkerboard_out": COUNT, "scales": COUNT},
    schemas.GlowConfig: {**_NETWORK, "levels": Range(low=1, words=("auto",)), "steps": COUNT,
                         "weight_y": Range(low=0, meaning="0: no class prediction")},
    schemas.PixelCNNFlowConfig: {**_NETWORK, "n_components": COUNT},
    schemas.FlowPlusPlusConfig: {"n_filters": COUNT, "n_blocks": COUNT,
                                 "n_components": COUNT, "heads": COUNT, "dropout": DROPOUT,
                                 "column_in": SOME, "channelwise": SOME, "column_out": SOME},
    schemas.TarFlowConfig: {"patch_size": COUNT, "width": COUNT, "blocks": COUNT,
                            "layers_per_block": COUNT, "head_dim": COUNT, "expansion": COUNT,
                            "max_log_scale": Range(low=0, meaning="0: unbounded, as released"),
                            "drop_label": FRACTION},
    schemas.GMM1DConfig: {**_DRAWN, "stds": POSITIVE, "weights": POSITIVE,
                          "means": Range()},
    schemas.Toy2DConfig: {**_DRAWN, "noise": Range(low=0, meaning="null: the set's own")},
    schemas.ArrayConfig: {"n_val": VALIDATION},
    schemas.ImageArrayConfig: {**_IMAGES, "levels": Range(low=2)},
    schemas.TorchvisionConfig: {**_IMAGES, "bits": Range(low=1, high=8)},
    schemas.PhotoPatchesConfig: {**_IMAGES, "size": Range(low=2), "n_test": COUNT,
                                 "seed": SEED},
    schemas.ImageFolderConfig: {**_IMAGES, "size": Range(low=2), "n_test": SOME, "seed": SEED,
                                "channels": Range(choices=(1, 3), meaning="grey or RGB")},
    schemas.ImageNetConfig: {**_IMAGES, "size": Range(choices=(32, 64))},
    schemas.DigitsConfig: {**_IMAGES, "n_test": COUNT, "seed": SEED},
    schemas.NoDequantConfig: {},
    schemas.UniformDequantConfig: {**_UNIFORM, "range": Range()},
    schemas.AutoDequantConfig: _UNIFORM,
    schemas.GaussianDequantConfig: {"sigma": POSITIVE, "range": Range()},
    schemas.VariationalDequantConfig: {**_UNIFORM, "n_filters": COUNT, "n_blocks": COUNT,
                                       "n_couplings": COUNT,
                                       "context_channels": COUNT, "n_components": COUNT,
                                       "heads": COUNT, "dropout": DROPOUT},
    schemas.AdamConfig: {**_OPTIM, "betas": FRACTION},
    schemas.AdamWConfig: {**_OPTIM, "betas": FRACTION},
    schemas.AdamaxConfig: {**_OPTIM, "betas": FRACTION},
    schemas.SGDConfig: {**_OPTIM, "momentum": FRACTION},
    schemas.TrainConfig: {
        "steps": SOME, "batch_size": COUNT, "eval_every": COUNT, "sample_every": COUNT,
        "checkpoint_every": COUNT, "log_every": COUNT, "eval_batch_size": COUNT,
        "n_samples": COUNT, "max_nonfinite": COUNT, "sample_temperature": POSITIVE,
        "grad_clip": Range(low=0, meaning="0: no clipping"),
        "ema_decay": Range(low=0, high=1, open="high", meaning="0: no average"),
        "dist_timeout_s": Range(low=1, high=1e9, meaning="seconds; 7200 by default"),
    },
    schemas.SampleConfig: {"n": COUNT, "temperature": POSITIVE, "seed": SEED,
                           "interpolation_steps": Range(low=2), "interpolation_pairs": SOME,
                           "guidance": Range(low=0, meaning="0: no guidance")},
    schemas.EvalConfig: {},
    schemas.Config: {"seed": SEED, "threads": Range(low=1, meaning="null: torch's default")},
}

# The top level's sections with a schema of their own; the groups' options are found by
# their _target_ (SCHEMAS), since a group holds whichever option was chosen.
_SECTIONS: dict[str, type] = {"train": schemas.TrainConfig, "sample": schemas.SampleConfig,
                              "eval": schemas.EvalConfig}


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
            if key not in node or OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            values = list(value) if isinstance(value, (ListConfig, list)) else [value]
            bad = [item for item in values if not allowed.admits(item)]
            if bad:
                shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) \
                    else value
                each = "each value of " if isinstance(value, ListConfig) else ""
                finite = "finite and " if any(isinstance(item, float) and
                                               not math.isfinite(item) for item in bad) else ""
                errors.append(f"{prefix}{key}={shown}: {each}{prefix}{key} must be "
                              f"{finite}{allowed.describe()}")
    return errors


def check_ranges(cfg: DictConfig) -> None:
    """Refuse a config with any key out of its range, naming every such key at once."""
    errors = range_errors(cfg)
    if errors:
        raise ConfigError("; ".join(errors))


class RangeCheck(Callback):
    """Hydra calls this once the config is composed and before it makes the run folder:
    a value out of range ends the command there, with nothing written. (A sweep's jobs are
    checked each in its own job, by ``flowtrain.train``.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        errors = range_errors(config)
        if errors:
            # Hydra would turn a callback's exception into a warning and run the job.
            print(f"Error: {'; '.join(errors)}", file=sys.stderr, flush=True)
            sys.exit(2)


def unranged_keys() -> list[str]:
    """Numeric keys of a schema with no range here: a key added to a schema must join the
    table (a test keeps this empty)."""
    missing = []
    for schema, ranges in RANGES.items():
        for item in fields(schema):
            kind = str(item.type)
            if any(word in kind for word in ("int", "float")) and "Enum" not in kind \
                    and item.name not in ranges and item.name != "_target_":
                missing.append(f"{schema.__name__}.{item.name}")
    return missing
