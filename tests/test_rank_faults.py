"""Faults on one torchrun rank (gloo, 2 processes on the CPU), injected by a wrapper that
patches the training step of rank 1: a SIGTERM, a NaN loss, a rank that is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import read_metrics
from test_distributed import TINY_REALNVP_DIGITS

from flowtrain.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

# rank 1 meets FAULT just before training step FAULT_STEP; with DUMP_WEIGHTS every rank
# saves its model's weights at the end, to compare the ranks
FAULTY_RANK = '''
import os, signal, sys
from pathlib import Path
import torch
from flowtrain.training.loop import Trainer

fault, at = os.environ.get("FAULT"), int(os.environ.get("FAULT_STEP", "0"))
train_step, run = Trainer.train_step, Trainer.run

def faulty_train_step(self, batch, labels=None):
    if self.ranks.rank == 1 and self.state.step + 1 == at:
        if fault == "nan":
            batch = batch * float("nan")
        elif fault == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif fault == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self, batch, labels)

def run_and_dump(self):
    metrics = run(self)
    if os.environ.get("DUMP_WEIGHTS"):
        torch.save(self.state.model.state_dict(), self.run_dir / f"rank{self.ranks.rank}.pt")
    return metrics

Trainer.train_step, Trainer.run = faulty_train_step, run_and_dump
from flowtrain.train import main
sys.argv = ["flowtrain", *sys.argv[1:]]
main()
'''
STEPS = [*TINY_REALNVP_DIGITS, "train.steps=8", "train.eval_every=4", "train.sample_every=8",
         "train.checkpoint_every=4", "train.log_every=2"]


def torchrun(tmp_path: Path, run_dir: Path, *args: str, **faults: str
             ) -> subprocess.CompletedProcess:
    script = tmp_path / "faulty_rank.py"
    script.write_text(FAULTY_RANK)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), *STEPS, *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, **faults})


def test_sigterm_on_one_rank_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path):
    whole = torchrun(tmp_path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    stopped = torchrun(tmp_path, tmp_path / "split", FAULT="sigterm", FAULT_STEP="3")
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 0, output
    assert output.count("Continue with: torchrun --nproc_per_node=2 -m flowtrain ") == 1
    assert "another rank at step 3" in output
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["step"] == 3
    resumed = torchrun(tmp_path, tmp_path / "split", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    expected, got = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert got["steps"] == 8 and got["test_nll"] == expected["test_nll"]
    assert got["best_val_nll"] == expected["best_val_nll"]


def test_a_nan_on_one_rank_is_skipped_by_every_rank_together(tmp_path):
    result = torchrun(tmp_path, tmp_path / "run", FAULT="nan", FAULT_STEP="3",
                      DUMP_WEIGHTS="1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("step 3: skipped (loss nan") == 1  # rank 0 speaks for both
    metrics = read_metrics(tmp_path / "run")
    assert metrics["steps"] == 8 and metrics["nonfinite_steps"] == 1
    ranks = [torch.load(tmp_path / "run" / f"rank{rank}.pt", weights_only=True)
             for rank in (0, 1)]
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])


def test_a_rank_that_dies_stops_the_others_with_a_clear_message_in_bounded_time(tmp_path):
    started = time.monotonic()
    result = torchrun(tmp_path, tmp_path / "run", "train.dist_timeout_s=20",
                      FAULT="sigkill", FAULT_STEP="6")
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0 and elapsed < 60
    assert "rank 0: another process of this run stopped" in output
    assert "continue with: torchrun --nproc_per_node=2 -m flowtrain" in output
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4
