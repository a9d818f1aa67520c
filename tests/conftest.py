"""Shared helpers: run the real CLI in a temporary folder and read what it leaves."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

# Two xdist workers share the cores: one torch thread per process (inherited by every CLI
# run a test starts) keeps OpenMP from oversubscribing them, which made sampling-heavy
# tests three to four times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 300  # one flowtrain run, in this process or in a subprocess

# The modules that start real processes or train to a set accuracy, longest first. xdist
# hands whole modules to its two workers in collection order (--no-loadscope-reorder), so
# these start early and the workers finish together; by default it would order modules by
# their number of tests and leave the three long torchrun tests for last.
LONGEST_FIRST = ("test_distributed.py", "test_rank_faults.py", "test_cli.py",
                 "test_accuracy.py", "test_sweeps.py", "test_survival.py", "test_install.py",
                 "test_tasks.py", "test_images.py", "test_benchmark.py",
                 "test_config_ranges.py", "test_data_kinds.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable otherwise


# Small enough to finish in seconds, large enough to exercise every periodic action.
TINY_RUN = ["model=mixture_cdf", "data=gmm1d", "train.steps=40", "train.batch_size=64",
            "train.eval_every=20", "train.sample_every=20", "train.checkpoint_every=20",
            "train.log_every=10", "train.n_samples=256", "data.n_train=2000",
            "data.n_val=500", "data.n_test=500"]


def run_cli(*args: str, cwd: Path, check: bool = True, module: str = "flowtrain",
            env: dict | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """``flowtrain ARGS`` as a user would run it, in ``cwd``, its output captured.

    In this process by default: the same ``flowtrain.train.main`` the console script calls,
    Hydra parsing the same argv, without paying ~4 s of imports per run. ``process=True``
    (or another ``module``) starts a real ``python -m MODULE`` instead, for the tests
    where the process itself is the point."""
    if process or module != "flowtrain":
        result = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
            timeout=RUN_TIMEOUT_S, env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})})
    else:
        result = _run_in_this_process(list(args), cwd, env or {})
    if check and result.returncode != 0:
        raise AssertionError(f"flowtrain {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def _run_in_this_process(args: list[str], cwd: Path, env: dict
                         ) -> subprocess.CompletedProcess:
    """``main()`` with ``sys.argv`` set, in ``cwd``; whatever a run changes in the process
    (working folder, environment, argv, torch threads, logging handlers and levels, the
    global random generators it seeds) is put back. A run that hangs ends the worker
    after ``RUN_TIMEOUT_S`` with every thread's traceback, as the subprocess's timeout did."""
    import faulthandler
    import random

    import numpy as np
    import torch

    from flowtrain.train import main

    saved_cwd, saved_argv, saved_env = os.getcwd(), sys.argv, dict(os.environ)
    saved_threads = torch.get_num_threads()
    saved_random = random.getstate(), np.random.get_state()
    root, flowtrain_log = logging.getLogger(), logging.getLogger("flowtrain")
    saved_handlers, saved_levels = list(root.handlers), (root.level, flowtrain_log.level)
    stdout, stderr = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    os.environ.update({"HYDRA_FULL_ERROR": "0", **env})
    sys.argv = ["flowtrain", *args]
    faulthandler.dump_traceback_later(RUN_TIMEOUT_S, exit=True)
    try:
        with (contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr),
              torch.random.fork_rng()):
            try:
                main()
                returncode = 0
            except SystemExit as stop:
                returncode = stop.code if isinstance(stop.code, int) else int(
                    stop.code is not None)
            except Exception:  # what Hydra would have printed, then exit status 1
                traceback.print_exc()
                returncode = 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_levels[0])
        flowtrain_log.setLevel(saved_levels[1])
        random.setstate(saved_random[0])
        np.random.set_state(saved_random[1])
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        torch.set_num_threads(saved_threads)
        torch.set_flush_denormal(False)  # what a run turns on; every test starts without
    return subprocess.CompletedProcess(["flowtrain", *args], returncode, stdout.getvalue(),
                                       stderr.getvalue())


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's TensorBoard event files, as {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture
def tiny_run():
    return list(TINY_RUN)


def cli_with_patch(patch: str, *args: str) -> list[str]:
    """The command line of ``flowtrain ARGS`` with Python ``patch`` run first in the same
    process: how tests simulate a full disk, a slow disk or a NaN at a chosen step."""
    program = (f"import sys\nsys.argv = ['flowtrain', *{list(args)!r}]\n{patch}\n"
               "from flowtrain.train import main\nmain()\n")
    return [sys.executable, "-c", program]


def whole_and_resumed(tmp_path: Path, common: list[str], stop_at: int) -> tuple[dict, dict]:
    """The metrics of a run in one go, and of the same run stopped at ``stop_at`` steps
    and resumed to the end: a resume must not change a single number."""
    run_cli(*common, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    run_cli(*common, f"train.steps={stop_at}", f"hydra.run.dir={tmp_path / 'split'}",
            cwd=tmp_path)
    run_cli(*common, f"hydra.run.dir={tmp_path / 'split'}", "resume=true", cwd=tmp_path)
    return read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")


def sample_four(checkpoint: Path, tmp_path: Path):
    """``task=sample`` of 4 samples and one 3-step interpolation from ``checkpoint`` into
    tmp_path/sampled; the samples as stored (numpy)."""
    import numpy as np

    out = tmp_path / "sampled"
    run_cli("task=sample", f"ckpt={checkpoint}", "sample.n=4", "sample.interpolation_pairs=1",
            "sample.interpolation_steps=3", f"hydra.run.dir={out}", cwd=tmp_path)
    return np.load(out / "samples.npz")["samples"]
