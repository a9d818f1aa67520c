"""Every public path on every kind of image data users bring: 256-level uint8 pictures
with one and three channels, the 17-level digits; arrays given as NumPy or torch, as
uint8 or int64. Each kind trains (from a file of that dtype), and its checkpoint goes
through the API (log_prob, bits_per_dim, encode/decode, sample), task=eval and
task=sample, the way tests/test_bijections.py runs every bijection through one list."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_cli

import flowtrain
from flowtrain.data.images import Digits


@dataclass(frozen=True)
class DataKind:
    name: str
    channels: int
    levels: int
    stored: str  # the dtype of the training file (image_array) or "digits" (data=digits)

    def images(self, n: int, seed: int) -> np.ndarray:
        """Random images over every level, both ends included."""
        rng = np.random.default_rng(seed)
        values = rng.integers(0, self.levels, (n, self.channels, 4, 4))
        values[0].flat[:2] = 0, self.levels - 1
        return values.astype(self.stored)


KINDS = [DataKind("grey256_uint8", 1, 256, "uint8"),
         DataKind("colour256_uint8", 3, 256, "uint8"),
         DataKind("colour256_int64", 3, 256, "int64"),
         DataKind("digits17", 1, 17, "digits")]
# the forms an array reaches the API in
FORMS = {"numpy_uint8": lambda x: x.astype(np.uint8),
         "numpy_int64": lambda x: x.astype(np.int64),
         "torch_uint8": lambda x: torch.as_tensor(x.astype(np.uint8)),
         "torch_int64": lambda x: torch.as_tensor(x.astype(np.int64))}
TINY = ["model=realnvp", "model.n_filters=4", "model.n_blocks=1", "model.checkerboard_in=1",
        "model.channelwise=1", "model.checkerboard_out=1", "train.steps=4",
        "train.batch_size=8", "train.eval_every=2", "train.sample_every=4",
        "train.checkpoint_every=2", "train.log_every=2", "train.eval_batch_size=16",
        "train.n_samples=4", "device=cpu", "seed=5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Each kind's run folder and its test images (as NumPy integers)."""
    runs = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind.name)
        if kind.stored == "digits":
            data, test = ["data=digits"], Digits().test.numpy()
        else:
            test = kind.images(9, seed=1)
            np.savez(folder / "images.npz", train=kind.images(40, seed=0), test=test)
            data = ["data=image_array", f"data.path={folder / 'images.npz'}", "data.n_val=8"]
        run_cli(*TINY, *data, f"hydra.run.dir={folder / 'run'}", cwd=folder)
        runs[kind.name] = folder / "run", test.astype(np.int64)
    return runs


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_the_api_scores_encodes_and_samples_every_kind(trained, kind, form):
    run_dir, test = trained[kind.name]
    flow = flowtrain.load(run_dir / "checkpoints" / "best.pt")
    assert flow.levels == kind.levels and flow.data_shape == (kind.channels, *test.shape[2:])
    given = FORMS[form](test)
    # the run's own test number of best.pt, with the noise its evaluation drew
    assert flow.bits_per_dim(given).mean().item() == pytest.approx(
        read_metrics(run_dir)["test_bpd_at_best"], abs=1e-6)
    assert torch.isfinite(flow.log_prob(given, n_samples=2)).all()
    decoded = flow.decode(flow.encode(given))
    assert decoded.dtype == torch.uint8 and torch.equal(decoded.long(), torch.as_tensor(test))
    samples = flow.sample(3, seed=0)
    assert samples.dtype == torch.uint8 and samples.shape == (3, *flow.data_shape)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_values_beyond_the_levels_are_refused_in_every_dtype(trained, kind):
    run_dir, test = trained[kind.name]
    flow = flowtrain.load(run_dir / "checkpoints" / "last.pt")
    too_high = torch.as_tensor(test).clone()
    too_high[0].view(-1)[0] = kind.levels
    with pytest.raises(ValueError, match=f"values must lie in 0 .. {kind.levels - 1}"):
        flow.log_prob(too_high)
    with pytest.raises(ValueError, match="values must lie in 0"):
        flow.log_prob(torch.as_tensor(test) - 1)  # a negative value


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_eval_and_sample_tasks_on_every_kind(trained, kind, tmp_path):
    run_dir, test = trained[kind.name]
    best = run_dir / "checkpoints" / "best.pt"
    run_cli("task=eval", f"ckpt={best}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["test_bpd"] == pytest.approx(read_metrics(run_dir)["test_bpd_at_best"],
                                               abs=1e-6)
    run_cli("task=sample", f"ckpt={best}", "sample.n=4", "sample.interpolation_pairs=1",
            "sample.interpolation_steps=3", f"hydra.run.dir={tmp_path / 'sample'}",
            cwd=tmp_path)
    samples = np.load(tmp_path / "sample" / "samples.npz")["samples"]
    assert samples.dtype == np.uint8 and samples.shape == (4, *test.shape[1:])
    assert int(samples.max()) < kind.levels
