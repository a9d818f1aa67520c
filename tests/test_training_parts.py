"""The pieces of the loop a resume depends on: batches, schedule, checkpoints."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from flowtrain.config import Schedule
from flowtrain.errors import CheckpointError, ConfigError
from flowtrain.training.batches import BatchStream
from flowtrain.training.checkpoint import (
    check_state_dict_matches,
    load_checkpoint,
    save_checkpoint,
)
from flowtrain.training.logger import RunLogger
from flowtrain.training.optim import lr_factor
from flowtrain.training.runtime import flush_subnormals, rng_state, set_rng_state


def test_batch_stream_resumes_in_the_same_order():
    data = torch.arange(10).unsqueeze(1)
    stream = BatchStream(data, batch_size=4, seed=0)
    for _ in range(3):
        stream.next()
    saved = stream.state_dict()
    expected = [stream.next() for _ in range(5)]
    resumed = BatchStream(data, batch_size=4, seed=123)
    resumed.load_state_dict(saved)
    replayed = [resumed.next() for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(expected, replayed, strict=True))


def test_batch_stream_sees_every_example_once_per_epoch():
    stream = BatchStream(torch.arange(12).unsqueeze(1), batch_size=4, seed=0)
    epoch = torch.cat([stream.next() for _ in range(3)]).flatten()
    assert sorted(epoch.tolist()) == list(range(12))


def test_mirrored_batches_are_mirror_images_and_replay_on_resume():
    images = torch.arange(64 * 6).view(64, 1, 2, 3)  # every image differs from its mirror
    stream = BatchStream(images, batch_size=16, seed=0, hflip=True)
    plain = BatchStream(images, batch_size=16, seed=0)
    mirrored = 0
    for _ in range(4):  # one epoch: the same order as without flips
        batch, unflipped = stream.next(), plain.next()
        same = (batch == unflipped).flatten(1).all(dim=1)
        assert torch.equal(batch[~same], unflipped[~same].flip(-1))
        mirrored += int((~same).sum())
    assert 16 < mirrored < 48  # about half
    saved = stream.state_dict()
    expected = [stream.next() for _ in range(6)]
    resumed = BatchStream(images, batch_size=16, seed=5, hflip=True)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, resumed.next()) for a in expected)
    with pytest.raises(ConfigError, match="data.hflip mirrors images"):
        BatchStream(torch.zeros(8, 2), batch_size=4, seed=0, hflip=True)


def test_batch_larger_than_data_is_refused():
    with pytest.raises(ConfigError, match="train.batch_size"):
        BatchStream(torch.zeros(5, 1), batch_size=6, seed=0)


def test_warmup_then_cosine_schedule():
    factor = lambda step: lr_factor(step, Schedule.cosine, 10, 110, 0.1)  # noqa: E731
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(110) == pytest.approx(0.1)
    assert lr_factor(50, Schedule.constant, 10, 110, 0.1) == 1.0


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    state = rng_state(torch.device("cpu"))
    save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    expected = torch.rand(3)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)
    save_checkpoint({"step": 2, "weights": torch.ones(3)}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["step"] == 2


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"weights": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a checkpoint"):
        load_checkpoint(path)


def _random_bytes(seed: int, first: bytes = b"") -> bytes:
    return first + np.random.default_rng(seed).integers(0, 256, 2000, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 4, b"hello world\n", b"",
    _random_bytes(17),  # fails inside the unpickler with an IndexError
    # reads as a pickle GLOBAL opcode naming a made-up global
    _random_bytes(1, first=b"cmaotk\nzejn\n"),
], ids=["byte ramp", "text", "empty", "random bytes", "random bytes that read as a global"])
def test_a_file_that_is_no_checkpoint_is_called_that_not_code(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert "not a checkpoint at all, and was not loaded" in str(refused.value)
    assert "pickled" not in str(refused.value)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "flowtrain-checkpoint", "version": 1, "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)


def test_other_model_is_named_in_the_error(tmp_path):
    small, large = torch.nn.Linear(2, 3), torch.nn.Linear(2, 4)
    with pytest.raises(CheckpointError, match=r"weight: saved \(3, 2\), this run \(4, 2\)"):
        check_state_dict_matches(large, small.state_dict(), "model", tmp_path / "x.pt")


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="resume=PATH"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_lr_factor_never_negative():
    assert all(lr_factor(s, Schedule.cosine, 0, 100, 0.0) >= 0 for s in range(200))
    assert not math.isnan(lr_factor(0, Schedule.cosine, 0, 0, 0.0))


def _trainer(tmp_path, *overrides):
    """A Trainer built from the real config, as the CLI builds it."""
    from conftest import TINY_RUN
    from hydra import compose, initialize_config_dir

    from flowtrain.build import build_trainer
    from flowtrain.config import config_dir, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY_RUN, *overrides])
    return build_trainer(cfg, tmp_path)


def _snapshot(trainer) -> tuple[dict, dict]:
    import copy

    return copy.deepcopy((trainer.state.model.state_dict(),
                          trainer.state.optimizer.state_dict()["state"]))


def _assert_same(before, after) -> None:
    (weights, moments), (weights_after, moments_after) = before, after
    assert all(torch.equal(weights[key], weights_after[key]) for key in weights)
    for index, state in moments.items():
        assert all(torch.equal(value, moments_after[index][name])
                   for name, value in state.items())


def test_a_nonfinite_loss_changes_neither_weights_nor_optimizer(tmp_path):
    trainer = _trainer(tmp_path)
    # the optimizer has moments now
    trainer.train_step(trainer.state.batches.next().to(trainer.device))
    before = _snapshot(trainer)
    poisoned = trainer.state.batches.next().to(trainer.device).clone()
    poisoned[0] = float("nan")
    trainer.train_step(poisoned)
    _assert_same(before, _snapshot(trainer))
    assert trainer.state.step == 2
    assert (trainer.state.nonfinite.total, trainer.state.nonfinite.in_a_row) == (1, 1)
    trainer.train_step(trainer.state.batches.next().to(trainer.device))
    assert (trainer.state.nonfinite.total, trainer.state.nonfinite.in_a_row) == (1, 0)
    assert trainer.state.window.steps == 2  # the skipped step's loss is not averaged in


def test_an_infinite_gradient_with_a_finite_loss_is_skipped(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train_step(trainer.state.batches.next().to(trainer.device))
    before = _snapshot(trainer)
    parameter = next(trainer.state.model.parameters())
    handle = parameter.register_hook(lambda gradient: gradient * float("inf"))
    grad_norm = trainer.train_step(trainer.state.batches.next().to(trainer.device))
    handle.remove()
    assert not torch.isfinite(grad_norm)
    _assert_same(before, _snapshot(trainer))
    assert trainer.state.nonfinite.total == 1


def test_the_nonfinite_streak_survives_a_checkpoint(tmp_path):
    trainer = _trainer(tmp_path)
    poisoned = trainer.state.batches.next().to(trainer.device).clone()
    poisoned[:] = float("nan")
    trainer.train_step(poisoned)
    trainer.train_step(poisoned)
    trainer.save("last.pt")
    resumed = _trainer(tmp_path, "resume=true")
    assert (resumed.state.nonfinite.total, resumed.state.nonfinite.in_a_row) == (2, 2)


def test_a_resumed_runs_event_file_sorts_after_the_killed_runs(tmp_path):
    """TensorBoard reads event files in name order (the second they were made, then the
    pid): a run resumed within the second its predecessor started must still come after
    it, or its purge would hide the earlier curves."""
    (tmp_path / "tb").mkdir()
    killed = tmp_path / "tb" / f"events.out.tfevents.{int(time.time())}.host.999999999.0"
    killed.touch()
    with RunLogger(tmp_path, purge_step=36):
        pass
    names = sorted(path.name for path in (tmp_path / "tb").iterdir())
    assert names[0] == killed.name and len(names) == 2


def test_the_weight_average_starts_at_the_first_step_and_skips_nonfinite_ones(tmp_path):
    """train.ema_decay: the first update copies the weights (a data-dependent init lands
    in the average too), later ones move it by 1 - decay, skipped steps leave it alone."""
    trainer = _trainer(tmp_path, "train.ema_decay=0.75")
    state = trainer.state
    averaged, _ = state.evaluated
    assert averaged is not state.model
    trainer.train_step(state.batches.next().to(trainer.device))
    first = {name: value.clone() for name, value in state.model.state_dict().items()}
    assert all(torch.equal(averaged.state_dict()[name], value) for name, value in first.items())
    trainer.train_step(state.batches.next().to(trainer.device))
    for name, parameter in state.model.named_parameters():
        expected = 0.75 * first[name] + 0.25 * parameter.detach()
        assert torch.allclose(averaged.state_dict()[name], expected), name
    before = {name: value.clone() for name, value in averaged.state_dict().items()}
    poisoned = state.batches.next().to(trainer.device).clone()
    poisoned[0] = float("nan")
    trainer.train_step(poisoned)
    assert state.average.updates == 2
    assert all(torch.equal(averaged.state_dict()[name], value) for name, value in before.items())


def test_weight_decay_on_weight_scales_only_decays_the_g_of_weight_norm():
    """RealNVP's L2 penalty (Section 4.1) is on the weight scales: a step with a zero
    gradient moves the g of every weight-normalized layer and nothing else."""
    from omegaconf import OmegaConf

    from flowtrain.flows.realnvp import RealNVP
    from flowtrain.training.optim import build_optimizer

    model = RealNVP((1, 4, 4), n_filters=4, n_blocks=1)
    cfg = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 1.0, "weight_decay": 0.5,
                            "schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 1.0,
                            "weight_decay_on": "weight_scales"})
    optimizer = build_optimizer(cfg, model.named_parameters())
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    moved = {name for name, value in model.named_parameters()
             if not torch.equal(value, before[name])}
    scales = {name for name in before if name.endswith("parametrizations.weight.original0")}
    assert scales and moved == scales
    with pytest.raises(ConfigError, match="this model has none"):
        build_optimizer(cfg, nn.Linear(2, 2).named_parameters())


def test_subnormal_floats_are_flushed_to_zero_on_the_cpu():
    if not flush_subnormals():
        pytest.skip("this CPU cannot flush subnormal floats")
    try:
        assert (torch.tensor([1e-40]) * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
    assert (torch.tensor([1e-40]) * 1.0).item() > 0.0
