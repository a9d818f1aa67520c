"""torchrun with DistributedDataParallel on the CPU (gloo, 2 processes), end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import TINY_RUN, read_metrics, read_scalars, run_cli

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

TINY_REALNVP_DIGITS = ["data=digits", "model=realnvp", "model.n_filters=8", "model.n_blocks=1",
                       "model.checkerboard_in=2", "model.channelwise=1",
                       "model.checkerboard_out=1", "train.steps=20", "train.batch_size=16",
                       "train.eval_every=10", "train.sample_every=10",
                       "train.checkpoint_every=10", "train.log_every=5", "device=cpu"]
# Everything beyond the model that every rank must draw or keep as one process would.
RANK_SHARED_OPTIONS = [
    "dequant=variational", "dequant.n_couplings=2", "dequant.n_filters=6",
    "dequant.context_channels=2", "dequant.eval_samples=2",
    "train.ema_decay=0.9",  # the weight average, kept the same on every rank
    "model.conditional=true",  # each rank's labels sliced with its images
    "data.shift=0.1", "data.hflip=true"]  # augmentation drawn for the global batch


def torchrun(*args: str, cwd: Path, processes: int = 2, check: bool = True) -> str:
    """``torchrun --standalone --nproc_per_node=2 -m flowtrain ARGS``: its output."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={processes}", "-m", "flowtrain", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == check, output
    return output


def test_two_processes_follow_one_process_and_resume(tmp_path):
    """Class-conditional RealNVP (ActNorm's data-dependent init) with a learned
    dequantizer, on translated and mirrored images: two gloo processes train as one
    process does at the same global batch, then resume."""
    torchrun(*TINY_REALNVP_DIGITS, *RANK_SHARED_OPTIONS, cwd=tmp_path)
    # every rank composed its own config, yet they share one run folder
    (run_dir,) = (tmp_path / "outputs" / "torchrun").iterdir()
    assert list((tmp_path / "outputs").iterdir()) == [tmp_path / "outputs" / "torchrun"]
    assert "(2 processes)" in (run_dir / "flowtrain.log").read_text()
    first = read_metrics(run_dir)
    assert first["steps"] == 20
    run_cli(*TINY_REALNVP_DIGITS, *RANK_SHARED_OPTIONS, f"hydra.run.dir={tmp_path / 'single'}",
            cwd=tmp_path)
    # DDP averages the model's gradients; the dequantizer's are averaged beside it. Each
    # rank's own half-batch gradients would leave its dequantizer 5e-4 away from one
    # process's within 10 Adam steps; averaged, the two agree to rounding.
    together, alone = (torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
                       for folder in (run_dir, tmp_path / "single"))
    for name, value in alone["preprocessing"].items():
        assert torch.allclose(together["preprocessing"][name], value, rtol=0, atol=1e-6), name
    # The weight average follows the model, whose DDP-averaged updates round differently
    # (2e-5 after 20 steps; an average that missed updates would be off by far more).
    for name, value in _flat(alone["average"]).items():
        assert torch.allclose(_flat(together["average"])[name].float(), value.float(),
                              rtol=0, atol=1e-4), name
    # Every rank draws the global batch's dequantization noise and keeps its slice, and
    # ActNorm starts from the global batch's statistics: one process, up to rounding.
    single = read_scalars(tmp_path / "single")
    for tag in ("train/nll", "val/nll", "test/nll"):
        pairs = zip(read_scalars(run_dir)[tag], single[tag], strict=True)
        for (step, a), (single_step, b) in pairs:
            assert step == single_step and a == pytest.approx(b, rel=1e-4), tag
    assert first["test_bpd"] == pytest.approx(read_metrics(tmp_path / "single")["test_bpd"],
                                              rel=1e-4)
    output = torchrun(*TINY_REALNVP_DIGITS, *RANK_SHARED_OPTIONS, "train.steps=30",
                      f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
    assert "at step 20" in output
    assert read_metrics(run_dir)["steps"] == 30
    assert [step for step, _ in read_scalars(run_dir)["train/nll"]] == [5, 10, 15, 20, 25, 30]


def _flat(tree: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a nested state dict, by dotted name."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
    return flat


# What torchrun tells each of two processes; the refusals below come before any process
# group is joined, so they are checked in this process under the same environment.
TORCHRUN_RANK_0 = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path):
    result = run_cli(*TINY_RUN, "train.batch_size=63", f"hydra.run.dir={tmp_path}",
                     cwd=tmp_path, check=False, env=TORCHRUN_RANK_0)
    assert result.returncode == 2
    assert "must divide evenly between the 2 processes" in result.stdout + result.stderr


def test_a_sweep_under_torchrun_is_refused(tmp_path):
    result = run_cli("-m", *TINY_RUN, "optim.lr=1e-2,1e-3", f"hydra.sweep.dir={tmp_path}",
                     cwd=tmp_path, check=False, env=TORCHRUN_RANK_0)
    assert result.returncode == 2
    assert "-m (a sweep) and torchrun do not mix" in result.stdout + result.stderr


def test_only_the_process_groups_own_failures_are_reported_as_a_lost_rank():
    from flowtrain.errors import CheckpointError
    from flowtrain.training.distributed import _a_collective_failed

    assert _a_collective_failed(dist.DistBackendError("NCCL communicator was aborted"))
    assert _a_collective_failed(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection "
                                             "closed by peer [127.0.0.1]:4242"))
    assert _a_collective_failed(RuntimeError("Timed out waiting 5000ms for recv operation"))
    assert not _a_collective_failed(RuntimeError("DataLoader timed out after 60 seconds"))
    assert not _a_collective_failed(CheckpointError("last.pt: saved under nccl, timed out"))
    assert not _a_collective_failed(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not _a_collective_failed(RuntimeError("DataLoader timeout while reading gloo.png"))


@pytest.mark.parametrize("seconds", [0, 1e-9, -5, float("inf"), float("nan"), 1e300])
def test_a_collective_timeout_that_no_clock_can_wait_is_refused(seconds):
    from flowtrain.errors import ConfigError
    from flowtrain.training.distributed import collective_timeout

    with pytest.raises(ConfigError, match="train.dist_timeout_s"):
        collective_timeout(seconds)
    assert collective_timeout(5.5).total_seconds() == 5.5


def test_the_resume_command_launches_as_many_processes_on_as_many_nodes(tmp_path):
    from flowtrain.train import resume_command

    overrides = ["model=glow", "resume=false", "hydra.run.dir=old"]
    assert resume_command(overrides, tmp_path) == (
        f"flowtrain model=glow hydra.run.dir={tmp_path} resume=true")
    assert resume_command(overrides, tmp_path, processes=4, nodes=2).startswith(
        "torchrun --nnodes=2 --nproc_per_node=4 -m flowtrain model=glow ")
