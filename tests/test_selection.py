"""Honest selection: training evaluates and chooses best.pt on the validation split; the
test split is measured once, at the end, for the last model and for best.pt."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_metrics, read_scalars, run_cli

from flowtrain.data.array import ArrayData, ImageArrayData
from flowtrain.data.base import carve_validation
from flowtrain.data.gmm1d import GaussianMixture1D
from flowtrain.data.toy2d import Toy2D
from flowtrain.errors import DataError
from flowtrain.training.loop import Trainer

TINY_DIGITS = ["data=digits", "model=realnvp", "model.n_filters=8", "model.n_blocks=1",
               "model.checkerboard_in=2", "model.channelwise=1", "model.checkerboard_out=1",
               "train.steps=6", "train.batch_size=16", "train.eval_every=2",
               "train.sample_every=3", "train.checkpoint_every=2", "train.log_every=2",
               "train.eval_batch_size=64", "device=cpu"]
TINY_TOY2D = ["data=toy2d", "data.name=rings", "model=arflow2d", "model.hidden_features=8",
              "model.n_components=4", "data.n_train=300", "data.n_val=100", "data.n_test=100",
              "train.steps=6", "train.batch_size=32", "train.eval_every=2",
              "train.sample_every=3", "train.checkpoint_every=2", "train.log_every=2",
              "train.n_samples=64", "device=cpu"]


class Untouchable(torch.Tensor):
    """A tensor any use of which fails the test: what the test split is while training."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"the test split was used during training ({func})")


@pytest.fixture
def test_split_locked_while_training(monkeypatch):
    """Trainer.train (every step and the periodic evaluation, pictures and checkpoints)
    runs with data.test replaced by an Untouchable tensor; it is given back after."""
    train = Trainer.train

    def locked(self, logger, clock):
        real = self.data.test
        self.data.test = real.as_subclass(Untouchable)
        try:
            return train(self, logger, clock)
        finally:
            self.data.test = real

    monkeypatch.setattr(Trainer, "train", locked)


@pytest.mark.parametrize("run, per_dim", [(TINY_DIGITS, "bpd"), (TINY_TOY2D, "nll")],
                         ids=["digits", "toy2d"])
def test_the_test_split_is_untouched_until_the_end(test_split_locked_while_training,
                                                   tmp_path, run, per_dim):
    run_cli(*run, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    metrics, scalars = read_metrics(tmp_path), read_scalars(tmp_path)
    # validation during training; the test split once, at the last step
    assert [step for step, _ in scalars[f"val/{per_dim}"]] == [2, 4, 6]
    assert [step for step, _ in scalars[f"test/{per_dim}"]] == [6]
    # best.pt: the lowest validation result, its step, and what the run reports of it
    values = dict(scalars[f"val/{per_dim}"])
    best_step = min(values, key=values.get)
    assert metrics["best_step"] == best_step
    assert metrics[f"best_val_{per_dim}"] == pytest.approx(values[best_step], rel=1e-6)
    assert metrics[f"val_{per_dim}"] == pytest.approx(values[6], rel=1e-6)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == best["best_step"] == best_step
    assert f"test_{per_dim}_at_best" in metrics and "best_test_bpd" not in metrics
    if per_dim == "nll":  # continuous points: no bits/dim anywhere
        assert not [key for key in [*metrics, *scalars] if "bpd" in key]


@pytest.fixture(scope="module")
def selected_early(tmp_path_factory):
    """A digits run, keeping a weight average, whose validation results are made to be
    lowest at step 4 of 6, so that best.pt and the last model differ: the test numbers at
    the end must be measured on each one's own (averaged) weights."""
    folder = tmp_path_factory.mktemp("early")
    monkeypatch = pytest.MonkeyPatch()
    made_up = iter([300.0, 100.0, 200.0])  # nats per image at steps 2, 4, 6
    evaluate = Trainer.evaluate

    def evaluate_made_up(self, split):
        nll = evaluate(self, split)  # the real work still runs
        return next(made_up) if split == "val" else nll

    monkeypatch.setattr(Trainer, "evaluate", evaluate_made_up)
    try:
        # with a weight average: best.pt's averaged weights are what is measured
        run_cli(*TINY_DIGITS, "train.ema_decay=0.5", f"hydra.run.dir={folder / 'run'}",
                cwd=folder)
    finally:
        monkeypatch.undo()
    return folder


def _eval(run_dir, checkpoint, out_dir, *overrides):
    run_cli("task=eval", f"ckpt={run_dir / 'checkpoints' / checkpoint}", *overrides,
            f"hydra.run.dir={out_dir}", cwd=out_dir.parent)
    return json.loads((out_dir / "eval.json").read_text())


def test_best_pt_and_the_last_model_are_each_measured_on_test(selected_early, tmp_path):
    run_dir = selected_early / "run"
    metrics = read_metrics(run_dir)
    assert metrics["best_step"] == 4 and metrics["best_val_nll"] == 100.0
    assert metrics["val_nll"] == 200.0  # the last model's, measured at the last step
    at_best = _eval(run_dir, "best.pt", tmp_path / "best")
    last = _eval(run_dir, "last.pt", tmp_path / "last")
    assert at_best["step"] == 4 and last["step"] == 6
    assert metrics["test_bpd_at_best"] == pytest.approx(at_best["test_bpd"], abs=1e-6)
    assert metrics["test_bpd"] == pytest.approx(last["test_bpd"], abs=1e-6)
    assert at_best["test_bpd"] != last["test_bpd"]  # two sets of weights, two numbers
    scalars = read_scalars(run_dir)
    assert scalars["test/bpd_at_best"] == [(6, pytest.approx(metrics["test_bpd_at_best"]))]


def test_without_a_validation_split_nothing_is_selected(tmp_path):
    result = run_cli(*TINY_DIGITS, "data.n_val=0", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    metrics, scalars = read_metrics(tmp_path), read_scalars(tmp_path)
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    assert not [key for key in metrics if "val" in key or "best" in key]
    assert not [tag for tag in scalars if tag.startswith("val/")]
    assert [step for step, _ in scalars["test/bpd"]] == [6]
    assert "no validation split" in result.stdout + result.stderr
    # and there is no validation split to evaluate a checkpoint on
    out = tmp_path / "eval"
    refused = run_cli("task=eval", f"ckpt={tmp_path / 'checkpoints' / 'last.pt'}",
                      "eval.split=val", f"hydra.run.dir={out}", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "data.n_val" in refused.stdout + refused.stderr


@pytest.mark.parametrize("overrides", [["data.n_val=0", "optim.lr=1e-3,1e-4"],
                                       ["data.n_val=100,0"]], ids=["fixed", "swept"])
def test_a_sweep_without_a_validation_split_is_refused_before_training(tmp_path, overrides):
    result = run_cli("-m", *TINY_DIGITS, *overrides, "hydra.sweep.dir=sweep", cwd=tmp_path,
                     check=False)
    assert result.returncode == 2
    assert "data.n_val=0 leaves no validation split" in result.stdout + result.stderr
    assert not list(tmp_path.glob("sweep/*/checkpoints"))  # not even the n_val=100 job


def test_a_validation_split_too_large_names_the_limit(tmp_path):
    result = run_cli(*TINY_DIGITS, "data.n_val=1500", f"hydra.run.dir={tmp_path}",
                     cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert ("data.n_val must be between 0 (no validation split) and 1499 (the training "
            "split has 1500 examples)") in result.stdout + result.stderr


def test_a_validation_split_other_than_the_runs_is_refused(selected_early, tmp_path):
    """Another data.n_val carves another set, which can hold trained-on images."""
    out = tmp_path / "eval"
    refused = run_cli("task=eval", f"ckpt={selected_early / 'run' / 'checkpoints' / 'last.pt'}",
                      "eval.split=val", "data.n_val=300", f"hydra.run.dir={out}",
                      cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert ("was trained with data.n_val=150, and only that split holds examples it never "
            "trained on") in refused.stdout + refused.stderr


def test_drawn_data_sets_draw_validation_points_besides_the_others():
    """Train and test are the points drawn without a validation split (those of runs from
    before it); the validation points are new draws."""
    without = GaussianMixture1D([0.5, 0.5], [0.0, 3.0], [1.0, 1.0], n_train=50, n_test=20,
                                n_val=0)
    with_val = GaussianMixture1D([0.5, 0.5], [0.0, 3.0], [1.0, 1.0], n_train=50, n_test=20,
                                 n_val=30)
    assert without.val is None and with_val.val.shape == (30, 1)
    assert torch.equal(without.train, with_val.train)
    assert torch.equal(without.test, with_val.test)
    assert not set(with_val.val.flatten().tolist()) & set(with_val.train.flatten().tolist())
    toy = Toy2D("moons", n_train=40, n_val=10, n_test=10)
    assert torch.equal(toy.train, Toy2D("moons", n_train=40, n_val=0, n_test=10).train)
    with pytest.raises(DataError, match="data.n_val at least 0"):
        Toy2D("moons", n_train=40, n_val=-1, n_test=10)


def test_your_own_arrays_hold_out_a_tenth_unless_told(tmp_path):
    import numpy as np

    np.savez(tmp_path / "points.npz", train=np.arange(40.0).reshape(20, 2),
             test=np.zeros((5, 2)))
    points = ArrayData(str(tmp_path / "points.npz"))
    assert len(points.train) == 18 and len(points.val) == 2
    assert ArrayData(str(tmp_path / "points.npz"), n_val=0).val is None
    np.savez(tmp_path / "images.npz", train=np.zeros((30, 4, 4), int),
             test=np.zeros((5, 4, 4), int))
    images = ImageArrayData(str(tmp_path / "images.npz"), n_val=5)
    assert images.train.shape == (25, 1, 4, 4) and images.val.shape == (5, 1, 4, 4)


def test_validation_is_carved_from_training_by_a_fixed_permutation():
    train = torch.arange(20).unsqueeze(1)
    kept, val = carve_validation(train, 5, "numbers")
    again_kept, again_val = carve_validation(train, 5, "numbers")
    assert torch.equal(val, again_val) and torch.equal(kept, again_kept)
    assert sorted(torch.cat([kept, val]).squeeze(1).tolist()) == list(range(20))
    assert kept.squeeze(1).tolist() == sorted(kept.squeeze(1).tolist())  # order kept
    everything, none = carve_validation(train, 0, "numbers")
    assert everything is train and none is None
    for n_val in (-1, 20):
        with pytest.raises(DataError, match="data.n_val must be between 0"):
            carve_validation(train, n_val, "numbers")
