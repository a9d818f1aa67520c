"""``flowtrain.load``: a checkpoint opened from Python with its data set gone, scored,
sampled, encoded and decoded; and the README's example run as written."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import REPO, read_metrics, run_cli

import flowtrain
from flowtrain.errors import CheckpointError

LEVELS = 4
TINY = ["model=realnvp", "model.n_filters=4", "model.n_blocks=1", "model.checkerboard_in=1",
        "model.channelwise=1", "model.checkerboard_out=1", "train.steps=4",
        "train.batch_size=8", "train.eval_every=2", "train.sample_every=4",
        "train.checkpoint_every=2", "train.log_every=2", "train.eval_batch_size=7",
        "train.n_samples=4", "device=cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run on an image array whose file is deleted afterwards: loading must not need it.
    Returns the run folder and the test images."""
    folder = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, LEVELS, (n, 1, 4, 8), dtype=np.uint8)
              for split, n in (("train", 40), ("test", 17))}
    np.savez(folder / "images.npz", **images)
    run_cli(*TINY, "data=image_array", f"data.path={folder / 'images.npz'}",
            f"data.levels={LEVELS}", "data.n_val=8", "seed=3",
            f"hydra.run.dir={folder / 'run'}", cwd=folder)
    (folder / "images.npz").unlink()
    return folder / "run", torch.as_tensor(images["test"])


def test_load_scores_as_the_run_did_without_its_data(trained):
    run_dir, test = trained
    flow = flowtrain.load(run_dir / "checkpoints" / "best.pt")
    metrics = read_metrics(run_dir)
    assert flow.data_shape == (1, 4, 8) and flow.levels == LEVELS
    assert flow.step == metrics["best_step"]
    # the same noise draws, batch by batch, as the run's test evaluation of best.pt
    assert flow.bits_per_dim(test).mean().item() == pytest.approx(
        metrics["test_bpd_at_best"], abs=1e-6)
    first = flow.log_prob(test)
    assert torch.equal(first, flow.log_prob(test, seed=3))  # the run's seed by default
    assert not torch.equal(first, flow.log_prob(test, seed=1))
    assert torch.equal(flow.log_prob(test.numpy(), n_samples=4),  # NumPy arrays too
                       flow.log_prob(test, n_samples=4))
    assert flow.log_prob(test, n_samples=8).mean() >= first.mean() - 0.05


def test_samples_and_the_latent_round_trip_are_in_data_units(trained):
    run_dir, test = trained
    flow = flowtrain.load(run_dir / "checkpoints" / "last.pt")
    samples = flow.sample(5, seed=3)
    assert samples.shape == (5, 1, 4, 8) and samples.dtype == torch.uint8
    assert int(samples.max()) < LEVELS
    assert torch.equal(samples, flow.sample(5, seed=3))
    z = flow.encode(test)
    assert z.shape == test.shape and z.dtype == torch.float32
    assert torch.equal(flow.decode(z), test)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 1, 8, 4, dtype=torch.uint8), r"shape \(1, 4, 8\)"),
    (torch.zeros(2, 32, dtype=torch.uint8), r"shape \(1, 4, 8\)"),
    (torch.zeros(2, 1, 4, 8), "integer data in 0 .. 3"),
    (torch.full((2, 1, 4, 8), LEVELS), "values must lie in 0 .. 3"),
])
def test_data_the_flow_cannot_score_is_refused_naming_what_it_takes(trained, bad, message):
    flow = flowtrain.load(trained[0] / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match=message):
        flow.log_prob(bad)


def test_task_sample_needs_no_data_either(trained, tmp_path):
    """The same restore path from the CLI: samples and their grid, and no interpolation,
    since the test images it would walk between are gone."""
    run_dir, _ = trained
    out = tmp_path / "sampled"
    result = run_cli("task=sample", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}",
                     "sample.n=6", f"hydra.run.dir={out}", cwd=tmp_path)
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 4, 8) and samples.dtype == np.uint8
    assert (out / "samples.png").exists() and not (out / "interpolation.png").exists()
    assert "no interpolation" in result.stdout + result.stderr + (
        out / "flowtrain.log").read_text()
    # task=eval still needs its data, and says which file is missing
    failed = run_cli("task=eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}",
                     f"hydra.run.dir={tmp_path / 'evaluated'}", cwd=tmp_path, check=False)
    assert failed.returncode != 0 and "no such file" in failed.stdout + failed.stderr


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "noise.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        flowtrain.load(tmp_path / "noise.pt")


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use a trained flow from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    run_cli("experiment=digits_realnvp", "model.n_filters=4", "model.n_blocks=1",
            "train.steps=2", "train.eval_every=2", "train.sample_every=2",
            "train.checkpoint_every=2", "train.n_samples=4", "device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    code = _readme_example().replace("outputs/DATE/TIME",
                                     str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "samples.png").stat().st_size > 0
