"""Bad input fails before training with a message that names the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, read_metrics, run_cli


def _fails(*args, cwd):
    result = run_cli(*args, cwd=cwd, check=False)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout + result.stderr


def test_unknown_model_lists_the_choices(tmp_path):
    out = _fails("model=nosuchflow", cwd=tmp_path)
    assert "Could not find 'model/nosuchflow'" in out
    assert "mixture_cdf" in out


def test_unknown_key_fails_with_hydras_message(tmp_path):
    out = _fails("model=mixture_cdf", "model.n_componets=3", cwd=tmp_path)
    assert "Key 'n_componets' not in 'MixtureCDFConfig'" in out
    assert not (tmp_path / "outputs").exists()  # nothing started


def test_wrong_type_fails_with_hydras_message(tmp_path):
    out = _fails("train.steps=many", cwd=tmp_path)
    assert "could not be converted to Integer" in out


def test_unknown_family_lists_the_choices(tmp_path):
    out = _fails("model=mixture_cdf", "model.family=cauchy", cwd=tmp_path)
    assert "expected one of [gaussian, logistic]" in out


def test_missing_array_file_names_file_and_shapes(tmp_path):
    out = _fails("model=mixture_cdf", "data=array", f"data.path={tmp_path / 'absent.npz'}",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "absent.npz: no such file" in out and "[N] or [N, D]" in out


def test_array_path_not_given_names_the_key(tmp_path):
    out = _fails("model=mixture_cdf", "data=array", f"hydra.run.dir={tmp_path / 'run'}",
                 cwd=tmp_path)
    assert "data.path=" in out


@pytest.mark.parametrize("arrays, complaint", [
    ({"train": np.zeros((10, 2, 2, 2, 2)), "test": np.zeros((5, 2, 2, 2, 2))},
     "has shape (10, 2, 2, 2, 2)"),
    ({"train": np.zeros((10, 4, 4)), "test": np.zeros((5, 4, 4))}, "must be integers"),
    ({"train": np.full((10, 4, 4), 300), "test": np.zeros((5, 4, 4), int)}, "outside 0 .. 255"),
    ({"train": np.zeros((10, 4, 4), int), "test": np.zeros((5, 2), int)}, "differ in shape"),
    ({"train": np.zeros((10, 2))}, "no `test` array"),
    ({"train": np.array([1.0, np.nan]), "test": np.zeros(3)}, "NaN or infinite"),
    ({"train": np.zeros((10, 2)), "test": np.array([[0.0, np.inf]])}, "NaN or infinite"),
    ({"train": np.zeros((10, 2)), "test": np.zeros((5, 3))}, "differ in shape"),
    ({"train": np.zeros((0, 2)), "test": np.zeros((5, 2))}, "train split is empty"),
])
def test_ill_shaped_array_file_is_explained(tmp_path, arrays, complaint):
    np.savez(tmp_path / "bad.npz", **arrays)
    option = "data=image_array" if arrays["train"].ndim >= 3 else "data=array"
    out = _fails("model=mixture_cdf", option, f"data.path={tmp_path / 'bad.npz'}",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert complaint in out, out


def test_cuda_without_a_gpu_names_the_fix(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = _fails("device=cuda", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "device=cpu" in out


def test_resume_without_a_checkpoint_names_the_fix(tmp_path):
    out = _fails("resume=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "no checkpoint at" in out and "resume=PATH" in out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run; tests copy it before touching it."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_cli(*TINY_RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir


def _copy(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_checkpoint_of_another_model_is_refused(tmp_path, trained):
    run_dir = _copy(trained, tmp_path)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    out = _fails(*TINY_RUN, "model.n_components=3", f"hydra.run.dir={run_dir}",
                 "resume=true", cwd=tmp_path)
    assert "another setup" in out and "model.n_components: saved 8, now 3" in out
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


def test_a_checkpoint_from_before_the_validation_split_resumes_with_none(tmp_path, trained):
    """Its config has no data.n_val, and it trained on the whole training split: it
    resumes with data.n_val=0, and the refusal without it names that key and value."""
    from flowtrain.training.checkpoint import save_checkpoint

    run_dir = _copy(trained, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)
    del saved["config"]["data"]["n_val"]
    save_checkpoint({key: value for key, value in saved.items()
                     if key not in ("format", "version")}, last)
    steps = [arg for arg in TINY_RUN if not arg.startswith(("train.steps", "data.n_val"))]
    out = _fails(*steps, "train.steps=50", f"hydra.run.dir={run_dir}", "resume=true",
                 cwd=tmp_path)
    assert "data.n_val: saved 0, now 2000" in out  # the gmm1d default
    run_cli(*steps, "train.steps=50", "data.n_val=0", f"hydra.run.dir={run_dir}",
            "resume=true", cwd=tmp_path)
    assert read_metrics(run_dir)["steps"] == 50


def test_a_uniform_run_from_before_dequant_range_resumes_with_the_unit_range():
    """Checkpoints written before dequant.range have none: they meant [0, 1], so they
    resume with it and are refused with another; other dequantizers never get the key."""
    from flowtrain.checkpoint_config import check_same_setup
    from flowtrain.errors import CheckpointError

    uniform = {"_target_": "flowtrain.dequant.UniformDequantization", "logit_alpha": 0.0,
               "eval_samples": 1}
    saved = {"model": {}, "data": {"n_val": 0}, "dequant": uniform}
    check_same_setup(saved, {**saved, "dequant": {**uniform, "range": [0.0, 1.0]}},
                     Path("last.pt"))
    with pytest.raises(CheckpointError, match=r"dequant.range: saved \[0.0, 1.0\], now"):
        check_same_setup(saved, {**saved, "dequant": {**uniform, "range": [-1.0, 1.0]}},
                         Path("last.pt"))
    variational = {**uniform, "_target_": "flowtrain.dequant.VariationalDequantization"}
    check_same_setup({**saved, "dequant": variational},  # today's has init; no range
                     {**saved, "dequant": {**variational, "init": "identity"}}, Path("last.pt"))


def test_truncated_checkpoint_is_refused_and_left_alone(tmp_path, trained):
    run_dir = _copy(trained, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    out = _fails(*TINY_RUN, f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
    assert "is corrupt, truncated or not a checkpoint at all, and was not loaded" in out
    assert len(last.read_bytes()) == 1000 and (run_dir / "checkpoints" / "best.pt").exists()


class _WritesAFile:
    """Unpickling this would create ``path``: proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    evil, proof = tmp_path / "evil.pt", tmp_path / "code-ran"
    torch.save({"format": "flowtrain-checkpoint", "version": 2, "model": _WritesAFile(proof)},
               evil)
    out = _fails(*TINY_RUN, f"hydra.run.dir={tmp_path / 'run'}", f"resume={evil}",
                 cwd=tmp_path)
    assert "refusing" in out and "pickled Python objects" in out
    assert not proof.exists()


def test_batch_larger_than_the_data_names_both_sizes(tmp_path):
    out = _fails(*TINY_RUN, "data.n_train=100", "train.batch_size=128",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "128" in out and "100" in out and "train.batch_size" in out


def test_zero_interval_is_refused_before_training(tmp_path):
    out = _fails("model=mixture_cdf", "data=gmm1d", "train.log_every=0",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "train.log_every must be at least 1" in out


def test_variational_dequantization_of_continuous_data_names_the_fix(tmp_path):
    output = _fails(*TINY_RUN, "dequant=variational", f"hydra.run.dir={tmp_path}",
                    cwd=tmp_path)
    assert "dequant=variational needs discrete data" in output and "dequant=none" in output


# --- task=eval and task=sample ----------------------------------------------------------


def _refused(*args, cwd):
    """flowtrain's own refusal: exit status 2, the message alone."""
    result = run_cli(*args, cwd=cwd, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout + result.stderr


@pytest.mark.parametrize("task", ["eval", "sample"])
def test_eval_or_sample_without_a_checkpoint_names_the_key(tmp_path, task):
    out = _refused(f"task={task}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert f"task={task} needs a checkpoint: add ckpt=PATH" in out


def test_eval_of_a_missing_checkpoint_names_the_fix(tmp_path):
    out = _refused("task=eval", f"ckpt={tmp_path / 'absent.pt'}",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "no checkpoint at" in out and "absent.pt" in out and "ckpt=PATH" in out


def test_eval_of_a_truncated_checkpoint_is_refused(tmp_path, trained):
    last = _copy(trained, tmp_path) / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    out = _refused("task=sample", f"ckpt={last}", f"hydra.run.dir={tmp_path / 'out'}",
                   cwd=tmp_path)
    assert "is corrupt, truncated or not a checkpoint at all, and was not loaded" in out


@pytest.mark.parametrize("override, complaint", [
    ("model.n_components=3", "model.n_components: saved 8, given 3"),
    ("model=arflow2d", "model: saved mixture_cdf, given arflow2d"),
    ("dequant=none", "dequant: saved auto, given none"),
])
def test_eval_with_a_model_override_that_contradicts_the_checkpoint(tmp_path, trained,
                                                                   override, complaint):
    out = _refused("task=eval", f"ckpt={trained / 'checkpoints' / 'last.pt'}", override,
                   f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert "was trained with other settings" in out and complaint in out


def test_eval_on_data_of_another_shape_names_both_shapes(tmp_path, trained):
    out = _refused("task=eval", f"ckpt={trained / 'checkpoints' / 'last.pt'}", "data=toy2d",
                   f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert "(moons) has examples of shape (2,)" in out and "model for shape (1,)" in out


def test_unknown_task_lists_the_choices(tmp_path):
    out = _fails("task=fit", cwd=tmp_path)
    assert "expected one of [train, eval, sample]" in out


def test_ckpt_while_training_points_to_resume(tmp_path):
    out = _refused(*TINY_RUN, "ckpt=some.pt", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path)
    assert "ckpt= is read by task=eval and task=sample" in out and "resume=PATH" in out
