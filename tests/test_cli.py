"""The real ``flowtrain`` command end to end, in a temporary folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import read_metrics, read_scalars, run_cli

# continuous 1-D points: nats per point, no bits/dim (they are no code length there)
EXPECTED_SCALARS = {"train/nll", "val/nll", "test/nll", "test/nll_at_best", "lr",
                    "grad_norm", "throughput"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny default run shared by the tests that only read what it left."""
    from conftest import TINY_RUN

    folder = tmp_path_factory.mktemp("cli")
    run_dir = folder / "run"
    result = run_cli(*TINY_RUN, "device=cpu", f"hydra.run.dir={run_dir}", cwd=folder)
    return run_dir, result


def test_run_writes_metrics(finished_run):
    run_dir, _ = finished_run
    metrics = read_metrics(run_dir)
    for key in ("steps", "train_nll", "val_nll", "best_val_nll", "best_step", "test_nll",
                "test_nll_at_best", "wall_s", "train_samples_per_s", "params", "test_nll_true"):
        assert key in metrics, key
    assert not [key for key in metrics if "bpd" in key]
    assert metrics["steps"] == 40
    assert metrics["params"] == 3 * 8
    assert np.isfinite(metrics["test_nll"]) and metrics["test_nll"] > metrics["test_nll_true"] - 0.1


def test_run_writes_tensorboard_scalars_and_figures(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = finished_run
    scalars = read_scalars(run_dir)
    assert EXPECTED_SCALARS <= scalars.keys()
    assert not [tag for tag in scalars if "bpd" in tag]
    assert [step for step, _ in scalars["val/nll"]] == [20, 40]
    assert [step for step, _ in scalars["test/nll"]] == [40]  # the test split: at the end
    assert [step for step, _ in scalars["train/nll"]] == [10, 20, 30, 40]
    accumulator = EventAccumulator(str(run_dir / "tb"))
    accumulator.Reload()
    assert {"density", "latent"} <= set(accumulator.Tags()["images"])


def test_run_writes_safe_checkpoints(finished_run):
    run_dir, _ = finished_run
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "step", "rng", "config"} <= state.keys()
        assert isinstance(state["config"], dict)
        assert state["config"]["model"]["n_components"] == 8
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 40


def test_run_logs_into_hydra_job_log(finished_run):
    run_dir, _ = finished_run
    log = (run_dir / "flowtrain.log").read_text()
    assert "step 20: val" in log and "nats per point" in log and "done:" in log


def test_resume_continues_from_the_saved_step(finished_run, tmp_path):
    import shutil

    run_dir, _ = finished_run
    resumed_dir = tmp_path / "run"
    shutil.copytree(run_dir, resumed_dir)
    from conftest import TINY_RUN

    overrides = [arg for arg in TINY_RUN if not arg.startswith("train.steps")]
    result = run_cli(*overrides, "train.steps=60", f"hydra.run.dir={resumed_dir}",
                     "resume=true", cwd=tmp_path)
    assert "resumed from" in result.stderr + result.stdout
    assert "at step 40" in result.stderr + result.stdout
    assert read_metrics(resumed_dir)["steps"] == 60
    steps = [step for step, _ in read_scalars(resumed_dir)["train/nll"]]
    assert steps == [10, 20, 30, 40, 50, 60]


def test_resume_from_a_given_checkpoint(finished_run, tmp_path, tiny_run):
    run_dir, _ = finished_run
    overrides = [arg for arg in tiny_run if not arg.startswith("train.steps")]
    run_cli(*overrides, "train.steps=50", f"hydra.run.dir={tmp_path / 'new'}",
            f"resume={run_dir / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    assert read_metrics(tmp_path / "new")["steps"] == 50


def test_runs_are_deterministic_on_cpu(finished_run, tmp_path, tiny_run):
    run_dir, _ = finished_run
    run_cli(*tiny_run, "device=cpu", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    assert read_metrics(tmp_path / "again")["test_nll"] == read_metrics(run_dir)["test_nll"]


def test_array_data_trains(tmp_path, tiny_run):
    generator = np.random.default_rng(0)
    np.savez(tmp_path / "points.npz", train=generator.normal(size=(500, 2)),
             test=generator.normal(size=(200, 2)))
    overrides = [arg for arg in tiny_run if not arg.startswith("data.")]
    run_cli(*overrides, "data=array", f"data.path={tmp_path / 'points.npz'}",
            "model.family=logistic", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["steps"] == 40 and "test_nll_true" not in metrics


def test_sweep_runs_every_combination(tmp_path, tiny_run):
    run_cli("-m", *tiny_run, "optim.lr=1e-2,1e-3", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            cwd=tmp_path)
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    assert (tmp_path / "sweep" / "summary.csv").read_text().count("\n") == 3


def test_help_lists_groups_and_options(tmp_path):
    out = run_cli("--help", cwd=tmp_path).stdout
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if ": " in line}
    for group, options in {"model": ["mixture_cdf", "arflow2d"],
                           "data": ["gmm1d", "toy2d", "array", "image_array"],
                           "optim": ["adam", "adamw", "sgd"], "dequant": ["none"]}.items():
        assert all(option in lines[group] for option in options), lines.get(group)
    assert "schema" not in out
    # the train group holds training regimes, not one alias per data set
    assert lines["train"].split(":")[1].strip() == "images, points, small_images"


def test_cfg_job_prints_the_resolved_config(tmp_path):
    out = run_cli("--cfg", "job", "model=mixture_cdf", "model.n_components=3",
                  cwd=tmp_path).stdout
    assert "n_components: 3" in out and "_target_: flowtrain.flows.mixture_cdf" in out


def test_module_entry_point_is_the_same_command(tmp_path):
    out = run_cli("--cfg", "job", cwd=tmp_path, module="flowtrain.train").stdout
    assert "flowtrain.flows.realnvp.RealNVP" in out and "flowtrain.data.images.Digits" in out


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path, tiny_run):
    import signal
    import subprocess
    import sys
    import time

    replaced = ("train.steps", "train.checkpoint_every", "train.eval_every")
    overrides = [arg for arg in tiny_run if arg.split("=")[0] not in replaced]
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "flowtrain", *overrides, "train.steps=10000000",
         "train.checkpoint_every=100", "train.eval_every=100000", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "SIGTERM at step" in output and "resume=true" in output
    metrics = read_metrics(run_dir)
    assert metrics["stopped_by"] == "SIGTERM"
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == metrics["steps"] > 0
    # the run is not over: its test split is measured when it finishes, not now
    assert not [key for key in metrics if key.startswith("test")]
    assert "the test split is measured when the run finishes" in output


def test_every_toy_set_trains_end_to_end(tmp_path, tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    names = ["moons", "rings", "eight_gaussians", "checkerboard", "image"]
    run_cli("-m", *tiny_run, "model=arflow2d", "model.hidden_features=16", "data=toy2d",
            f"data.name={','.join(names)}", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    for job, name in enumerate(names):
        (run_dir,) = tmp_path.glob(f"{job}_*data.name={name},*")
        metrics = read_metrics(run_dir)
        assert metrics["steps"] == 40 and np.isfinite(metrics["test_nll"]), name
        assert ("test_nll_true" in metrics) == (name != "moons"), name
        accumulator = EventAccumulator(str(run_dir / "tb"))
        accumulator.Reload()
        assert "density" in accumulator.Tags()["images"], name
