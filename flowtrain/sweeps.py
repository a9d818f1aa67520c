"""Comparing the runs of a sweep: what identifies a run (its TensorBoard hyperparameters),
and the table a sweep ends with, one row per job (its overrides and results), best first,
printed and written beside Hydra's multirun.yaml as summary.csv and summary.json.

The table is a Hydra callback (``hydra.callbacks`` in conf/config.yaml), so it runs for
every launcher (basic, joblib, SLURM) in the process that started the sweep. Callbacks do
not get the jobs' return values: each job's metrics.json is read instead.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from flowtrain.errors import ConfigError

log = logging.getLogger(__name__)

# What flowtrain returns to a sweeper, so what "best" means in a sweep's table too: the
# best validation result of a run (quantized data in bits/dim, continuous points in nats),
# never a test result, which would tune the sweep on the test split.
OBJECTIVES = ("best_val_bpd", "best_val_nll")
# The results a run reports, by kind of data: what its row and its HParams entry show.
RESULTS = {"bpd": ("best_val_bpd", "test_bpd_at_best", "val_bpd", "test_bpd", "train_bpd"),
           "nll": ("best_val_nll", "test_nll_at_best", "val_nll", "test_nll", "train_nll")}
COUNTS = ("best_step", "steps", "wall_s")


def objective_key(metrics: dict[str, Any]) -> str | None:
    """The objective among ``metrics``' keys; None for a run without a validation split."""
    return next((key for key in OBJECTIVES if key in metrics), None)


def result_unit(metrics: dict[str, Any]) -> str:
    """``bpd`` or ``nll``: what a run's metrics.json says its results are compared in."""
    return metrics.get("result_unit", "bpd")


def result_keys(metrics: dict[str, Any]) -> tuple[str, ...]:
    """The results ``metrics`` (a run's metrics.json) has, in reporting order."""
    return tuple(key for key in RESULTS[result_unit(metrics)] if key in metrics)


# The groups whose option names a run, and the keys besides the job's own overrides that
# tell runs apart; what is left out (paths, data constants, where it ran) only crowds the
# HParams table.
IDENTIFYING_GROUPS = ("model", "data", "dequant", "optim", "train", "experiment")
IDENTIFYING_KEYS = ("optim.lr", "train.batch_size", "train.steps")
NOT_IDENTIFYING = ("hydra.", "resume", "device", "threads", "ckpt", "task")


def run_identity(cfg: DictConfig, choices: dict[str, str | None],
                 overrides: list[str]) -> dict[str, Any]:
    """{"model": "realnvp", "optim.lr": 0.001, ...}: the option of each group, the
    identifying keys and every key the job's command line set (``overrides``, as Hydra
    records them), with their resolved values."""
    identity: dict[str, Any] = {group: choices[group] for group in IDENTIFYING_GROUPS
                                if choices.get(group) is not None}
    keys = [*IDENTIFYING_KEYS,
            *(override.split("=", 1)[0].lstrip("+~") for override in overrides)]
    for key in keys:
        if key in identity or key.startswith(NOT_IDENTIFYING):
            continue
        value = OmegaConf.select(cfg, key)
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value)
        if not isinstance(value, DictConfig):
            identity[key] = value
    return identity


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder under ``sweep_dir``: job number, overrides, results; a job
    that left no metrics.json (it failed, or is still running) has empty results."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        config = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml")
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        rows.append({"job": config.hydra.job.num,
                     "overrides": list(OmegaConf.load(overrides_file)),
                     **{key: metrics[key] for key in (*result_keys(metrics), *COUNTS)
                        if key in metrics},
                     "folder": job_dir.name})
    columns = _result_columns(rows)
    rows = [{"job": row["job"], "overrides": row["overrides"],
             **{key: row.get(key) for key in columns}, "folder": row["folder"]}
            for row in rows]
    return sorted(rows, key=_objective_then_job)


def _result_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every result any row has, in reporting order (a sweep over data sets of both kinds
    shows both)."""
    order = [*RESULTS["bpd"], *RESULTS["nll"], *COUNTS]
    return [key for key in order if any(key in row for row in rows)]


def _objective_then_job(row: dict[str, Any]) -> tuple[float, int]:
    key = objective_key(row)
    value = row[key] if key is not None else None
    return (value if isinstance(value, float) and math.isfinite(value) else math.inf,
            row["job"])


def as_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text, numbers to 4 decimals; the overrides every job shares are
    said once above the table, so its last column shows only what the sweep varied."""
    shared = set.intersection(*(set(row["overrides"]) for row in rows))
    columns = [key for key in rows[0] if key not in ("overrides", "folder")] + ["swept"]
    cells = [[_cell(row[column]) for column in columns[:-1]]
             + [" ".join(item for item in row["overrides"] if item not in shared)]
             for row in rows]
    widths = [max(len(text) for text in [column, *(line[index] for line in cells)])
              for index, column in enumerate(columns)]
    lines = [[column.ljust(width) for column, width in zip(columns, widths, strict=True)]]
    lines += [[text.ljust(width) for text, width in zip(line, widths, strict=True)]
              for line in cells]
    table = "\n".join("  ".join(line).rstrip() for line in lines)
    return f"every job: {' '.join(sorted(shared)) or '-'}\n{table}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def swept_values(overrides: list[str], key: str) -> list[str]:
    """Every value the command line's ``overrides`` give ``key`` (all of a sweep's list or
    range; none for an interval)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group != key:
            continue
        if not override.is_sweep_override():
            values.append(str(override.value()))
        elif not override.is_interval_sweep():
            values += list(override.sweep_string_iterator())
    return values


def check_sweep_selects(cfg: DictConfig) -> None:
    """A sweep picks its best run, so each run needs a validation split to be judged on:
    refuse data.n_val=0, which would leave only the test split to select on, whether the
    config sets it or the sweep gives it to any job (checked before the first)."""
    overrides = list(OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])
    if OmegaConf.select(cfg, "data.n_val") == 0 or "0" in swept_values(overrides,
                                                                       "data.n_val"):
        raise ConfigError("a sweep (-m) selects its best run on validation bits/dim, and "
                          "data.n_val=0 leaves no validation split (selecting on the test "
                          "split would tune the sweep on it). Give data.n_val a count, or "
                          "run the jobs one by one without -m.")


class SweepSummary(Callback):
    """Refuses a sweep that could only select on test; writes SWEEP_DIR/summary.csv and
    summary.json and logs the table, best first."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep_selects(config)
        except ConfigError as error:
            # Hydra turns a callback's exception into a warning and goes on with the
            # sweep; exiting is what stops it before any job (a swept data.n_val=0,... is
            # refused by its own job instead).
            log.error("%s", error)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = job_rows(sweep_dir)
        if not rows:
            return
        (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        with open(sweep_dir / "summary.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**row, "overrides": " ".join(row["overrides"])} for row in rows)
        # print, not log: the root logger still writes into the last job's flowtrain.log
        best = objective_key(rows[0]) or "validation result"
        print(f"sweep of {len(rows)} jobs, lowest {best} first (summary.csv and "
              f"summary.json in {sweep_dir}):\n{as_table(rows)}", flush=True)
