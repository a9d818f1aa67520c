"""Runs that die and come back: SIGKILL while a checkpoint is being written and resume, a
full disk, non-finite steps. The kill needs a real process; the full disk and the NaN steps
patch the run in this one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, cli_with_patch, read_metrics, read_scalars, run_cli

import flowtrain.training.checkpoint as checkpoint
import flowtrain.training.loop as loop
from flowtrain.training.checkpoint import load_checkpoint

# Steps, evaluations and checkpoints that do not line up with the log steps, so a kill
# leaves a half-filled loss window behind that the resumed run must restore.
LONG_RUN = [arg for arg in TINY_RUN if not arg.startswith(("train.steps", "train.eval_every",
                                                            "train.checkpoint_every",
                                                            "train.sample_every"))]
LONG_RUN += ["train.steps=1500", "train.eval_every=400", "train.checkpoint_every=35",
             "train.sample_every=1000", "device=cpu"]
RUN_TO_RUN = ("wall_s", "train_samples_per_s")  # metrics that are timings


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"flowtrain ended ({process.returncode}) before {what}:\n{output}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _run_to_the_end(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    """Run flowtrain to the end (in this process, with whatever the test patched): exit
    status, output, run folder."""
    run_dir = tmp_path / "run"
    result = run_cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    return result.returncode, result.stdout + result.stderr, run_dir


def _timing_free(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in RUN_TO_RUN}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_cli(*LONG_RUN, f"hydra.run.dir={run_dir}", cwd=run_dir)
    return run_dir


# The first write of last.pt goes through; every later one writes a little, then hangs.
SLOW_SECOND_WRITE = """
import os, time
import flowtrain.training.checkpoint as checkpoint

real_open = checkpoint._open_temporary

class HangsAfterFirstWrite:
    def __init__(self, file):
        self.file, self.written = file, 0
    def write(self, data):
        if self.written:
            self.file.flush()
            time.sleep(600)
        self.written += len(data)
        return self.file.write(data)
    def __getattr__(self, name):
        return getattr(self.file, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.file.close()

def slow_after_the_first_last_pt(handle):
    name = os.readlink(f"/proc/self/fd/{handle}")
    folder = os.path.dirname(name)
    if ".last.pt." in name and os.path.exists(os.path.join(folder, "last.pt")):
        return HangsAfterFirstWrite(real_open(handle))
    return real_open(handle)

checkpoint._open_temporary = slow_after_the_first_last_pt
"""


def test_sigkill_while_writing_a_checkpoint_then_resume_matches_an_uninterrupted_run(
        tmp_path, uninterrupted):
    """One real process, killed mid-run in the worst place: half-way through writing
    its second last.pt. The first stays whole, and the resumed run (step 35: a half-filled
    loss window) ends with every number of a run that was never interrupted."""
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"
    process = _start(cli_with_patch(SLOW_SECOND_WRITE, *LONG_RUN, f"hydra.run.dir={run_dir}"),
                     tmp_path)

    def writing_the_second() -> bool:
        # last.pt first: a temporary seen before it exists belongs to the first write
        if not (folder / "last.pt").exists():
            return False
        for path in folder.glob(".last.pt.*.tmp"):
            try:
                if path.stat().st_size > 0:
                    return True
            except FileNotFoundError:  # renamed over last.pt since the glob saw it
                pass
        return False

    _wait_for(writing_the_second, process, "the second write of last.pt")
    _kill(process)
    assert not (run_dir / "metrics.json").exists()  # it really died mid-run
    assert load_checkpoint(folder / "last.pt")["step"] == 35  # the first, whole
    assert list(folder.glob(".last.pt.*.tmp"))  # the half-written one, left by the kill

    result = run_cli(*LONG_RUN, f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert "unfinished write" in output and "at step 35" in output
    assert not list(folder.glob(".*.tmp"))
    assert _timing_free(read_metrics(run_dir)) == _timing_free(read_metrics(uninterrupted))
    resumed, alone = read_scalars(run_dir), read_scalars(uninterrupted)
    for tag in ("train/nll", "test/nll", "lr", "grad_norm"):
        assert resumed[tag] == alone[tag], tag  # every logged point, not only the last


def _disk_full_after_first_save(monkeypatch) -> None:
    """Every write of last.pt after the first goes to /dev/full, which fails with ENOSPC."""
    real_open = checkpoint._open_temporary

    def full_after_the_first_last_pt(handle):
        name = os.readlink(f"/proc/self/fd/{handle}")
        if ".last.pt." in name and os.path.exists(os.path.join(os.path.dirname(name),
                                                               "last.pt")):
            os.close(handle)
            return open("/dev/full", "wb")
        return real_open(handle)

    monkeypatch.setattr(checkpoint, "_open_temporary", full_after_the_first_last_pt)


def test_no_space_left_while_saving_names_the_fix_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch):
    _disk_full_after_first_save(monkeypatch)
    status, output, run_dir = _run_to_the_end(tmp_path, *TINY_RUN)
    assert status == 2, output
    assert "no space left on the device while saving" in output
    assert "the previous last.pt is untouched" in output and "resume=true" in output
    assert "Traceback" not in output
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 20
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def _nan_loss_at(monkeypatch, steps: range) -> None:
    """The training loss is NaN at the given (1-based) steps."""
    real_nll = loop.negative_log_likelihood
    calls = {"training": 0}

    def nan_at_some_steps(*args, **kwargs):
        nll = real_nll(*args, **kwargs)
        if torch.is_grad_enabled():  # a training step, not an evaluation
            calls["training"] += 1
            if calls["training"] in steps:
                return nll * float("nan")
        return nll

    monkeypatch.setattr(loop, "negative_log_likelihood", nan_at_some_steps)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, range(12, 15))
    status, output, run_dir = _run_to_the_end(tmp_path, *TINY_RUN, "train.max_nonfinite=4")
    assert status == 0, output
    assert "step 12: skipped (loss nan" in output
    metrics = read_metrics(run_dir)
    assert metrics["nonfinite_steps"] == 3 and metrics["steps"] == 40
    scalars = read_scalars(run_dir)
    assert dict(scalars["nonfinite_steps"]) == {10: 0, 20: 3, 30: 3, 40: 3}
    assert all(value == value for _, value in scalars["train/nll"])  # no NaN logged


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, range(25, 100))
    status, output, run_dir = _run_to_the_end(tmp_path, *TINY_RUN, "train.max_nonfinite=4")
    assert status == 2, output
    assert "step 28: 4 steps in a row had a NaN or infinite loss" in output
    assert "lower optim.lr" in output and "Traceback" not in output
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] == 20
    assert all(value.isfinite().all() for value in saved["model"].values())
