"""One writer per run folder: a second training process in a folder another live process
writes stops before touching anything and names it; a lock whose holder was killed is
taken over with a warning, so resume=true after a crash just works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import filelock
import pytest
from conftest import TINY_RUN, read_metrics, run_cli

from flowtrain.training.run_lock import (
    LOCK_FILE,
    OFF_SWITCH,
    OWNER_FILE,
    RunFolderBusy,
    run_dir_named_in,
    run_folder_lock,
)

HOLD = """
import sys, time
from pathlib import Path
from flowtrain.training.run_lock import run_folder_lock
with run_folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that holds ``run_dir``'s lock until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_stops_before_touching_the_folder_and_a_dead_ones_lock_is_taken(
        tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        before = sorted(path.name for path in run_dir.iterdir())
        result = run_cli(*TINY_RUN, f"hydra.run.dir={run_dir}", "resume=false", cwd=tmp_path,
                         check=False)
        assert result.returncode == 2
        message = result.stdout + result.stderr
        assert "is being written by another flowtrain process" in message
        assert f"PID {holder.pid} on {os.uname().nodename}" in message
        assert sorted(path.name for path in run_dir.iterdir()) == before  # no .hydra/, no log
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it, as a crashed run does
        holder.wait()
    run_cli(*TINY_RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert read_metrics(run_dir)["steps"] > 0
    log = (run_dir / "flowtrain.log").read_text()
    assert f"taking over the run folder from PID {holder.pid}" in log
    assert (run_dir / LOCK_FILE).exists() and not (run_dir / OWNER_FILE).exists()


def test_only_a_training_command_that_names_its_folder_locks_before_hydra(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert run_dir_named_in(["flowtrain", "hydra.run.dir=out/x"]) == Path("out/x")
    for argv in (["flowtrain"], ["flowtrain", "-m", "hydra.run.dir=x"],
                 ["flowtrain", "task=eval", "ckpt=a.pt", "hydra.run.dir=x"]):
        assert run_dir_named_in(argv) is None
    monkeypatch.setenv("RANK", "1")  # under torchrun rank 0 alone writes the folder
    assert run_dir_named_in(["flowtrain", "hydra.run.dir=x"]) is None


@pytest.mark.parametrize("words", [
    ["--cfg", "job"], ["-c", "job"], ["-cjob"], ["--cf", "job"], ["--help"], ["--hydra-help"],
    ["--info"], ["--resolve", "--cfg", "job"], ["--shell-completion"], ["--multi"],
    ["hydra.mode=MULTIRUN"], ["hydra.mode='MULTIRUN'"], ["--no-such-flag"]])
def test_a_command_that_only_prints_or_sweeps_takes_no_lock(monkeypatch, words):
    monkeypatch.delenv("RANK", raising=False)
    assert run_dir_named_in(["flowtrain", *words, "hydra.run.dir=x"]) is None


def test_the_folder_is_the_one_hydra_will_use(monkeypatch):
    """Hydra resolves interpolations later and expands no ~: neither is guessed here (an
    interpolated folder is locked once training starts)."""
    monkeypatch.delenv("RANK", raising=False)
    assert run_dir_named_in(["flowtrain", "hydra.run.dir=out/${now:%H-%M-%S}"]) is None
    assert run_dir_named_in(["flowtrain", "hydra.run.dir=${oc.env:RUNS}/a"]) is None
    assert run_dir_named_in(["flowtrain", "hydra.run.dir=~/runs/a"]) is None  # Hydra refuses
    assert run_dir_named_in(["flowtrain", "hydra.run.dir='~/runs/a'"]) == Path("~/runs/a")
    assert run_dir_named_in(["flowtrain", "hydra.run.dir='out/a b'"]) == Path("out/a b")
    assert run_dir_named_in(["flowtrain", "hydra.run.dir= out/a"]) == Path("out/a")
    assert run_dir_named_in(["flowtrain", "++hydra.run.dir=out/b"]) == Path("out/b")
    assert run_dir_named_in(["flowtrain", "+hydra.run.dir=out/c"]) is None  # Hydra refuses
    assert run_dir_named_in(["flowtrain", "hydra.run.dir=out/d", "task=eval"]) is None


def test_a_lock_the_filesystem_refuses_names_the_off_switch(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(38, "Function not implemented")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    with pytest.raises(RunFolderBusy, match=f"{OFF_SWITCH}=off"), \
            run_folder_lock(tmp_path / "run"):
        pass

    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", read_only)
    with pytest.raises(RunFolderBusy, match="Make the folder writable"), \
            run_folder_lock(tmp_path / "run"):
        pass
    monkeypatch.setenv(OFF_SWITCH, "off")
    with run_folder_lock(tmp_path / "run"):
        pass
