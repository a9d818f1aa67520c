"""Class-conditional flows (model.conditional=true) end to end, for every image model:
trained and evaluated on the labels (test_bpd is -log p(x | y)), samples drawn of a named
class by task=sample and the Python API, a TensorBoard grid with one row per class, and
what is refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_cli, whole_and_resumed
from omegaconf import OmegaConf
from test_glow import TINY_GLOW
from test_images import TINY_FLOWPP, TINY_PIXELCNN, TINY_REALNVP, TINY_TARFLOW

import flowtrain
from flowtrain.data.images import Digits
from flowtrain.flows.tarflow import guided as guided_sampling

CONDITIONAL = ["data=digits", "model.conditional=true", "device=cpu"]
# the classes each run's TensorBoard grid shows (train.sample_classes: indices or names)
# and how many rows that is; None: the first ten, all the digits
SHOWN = {"realnvp": (None, 10), "glow": ("[3,7]", 2), "pixelcnn_arflow": ("[3,'7']", 2),
         "flowpp": ("[0,9,4]", 3), "tarflow": (None, 10)}
# Glow keeps a weight average (its evaluation, best.pt and flowtrain.load use it) and
# predicts the class as the released conditional run does (its loss, not its likelihood)
RUNS = {"realnvp": TINY_REALNVP,
        "glow": [*TINY_GLOW, "train.ema_decay=0.9", "model.weight_y=0.01"],
        "pixelcnn_arflow": TINY_PIXELCNN, "flowpp": TINY_FLOWPP,
        "tarflow": [*TINY_TARFLOW, "model.drop_label=0.1"]}  # as released, for guidance


def _shown(model: str) -> list[str]:
    chosen, _ = SHOWN[model]
    return [] if chosen is None else [f"train.sample_classes={chosen}"]


@pytest.fixture(scope="module", params=sorted(RUNS))
def conditional_run(request, tmp_path_factory) -> tuple[str, Path]:
    """A few steps of each image flow as p(x | digit)."""
    folder = tmp_path_factory.mktemp(f"conditional-{request.param}")
    run_cli(*RUNS[request.param], *CONDITIONAL, *_shown(request.param),
            f"hydra.run.dir={folder / 'run'}", cwd=folder)
    return request.param, folder / "run"


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


def test_test_bpd_is_minus_log_p_of_each_image_given_its_own_label(conditional_run, digits):
    """The run's test_bpd is the mean of -log2 p(x | y) / D over the test images with their
    labels, as the Python API scores them; other labels give another number."""
    _, run_dir = conditional_run
    metrics = read_metrics(run_dir)
    flow = flowtrain.load(run_dir / "checkpoints" / "last.pt")
    assert flow.classes == tuple(str(digit) for digit in range(10))
    assert metrics["n_classes"] == 10
    labels = digits.labels.test
    bits = flow.bits_per_dim(digits.test, label=labels)
    assert bits.mean().item() == pytest.approx(metrics["test_bpd"], rel=1e-5)
    other = flow.bits_per_dim(digits.test, label=(labels + 1) % 10)
    assert not torch.equal(bits, other)  # the labels reach the model (a few steps in: barely)


def test_the_sample_grid_has_one_row_per_class(conditional_run):
    """8x8 digits are shown 4x enlarged with a 1-pixel border: 33 pixels a row."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, run_dir = conditional_run
    accumulator = EventAccumulator(str(run_dir / "tb"))
    accumulator.Reload()
    grid = Image.open(io.BytesIO(accumulator.Images("samples")[-1].encoded_image_string))
    _, rows = SHOWN[model]
    n_samples = OmegaConf.load(run_dir / ".hydra" / "config.yaml").train.n_samples
    assert grid.height == rows * 33 + 1
    assert grid.width == max(1, min(8, min(n_samples, 64) // rows)) * 33 + 1


def test_task_sample_and_the_api_draw_the_named_class(conditional_run, tmp_path):
    _, run_dir = conditional_run
    out = tmp_path / "sampled"
    run_cli("task=sample", f"ckpt={run_dir / 'checkpoints' / 'last.pt'}", "sample.n=3",
            "sample.label=7", "sample.interpolation_pairs=1", "sample.interpolation_steps=3",
            f"hydra.run.dir={out}", cwd=tmp_path)
    saved = np.load(out / "samples.npz")
    assert saved["samples"].shape == (3, 1, 8, 8) and saved["samples"].max() <= 16
    assert saved["labels"].tolist() == [7, 7, 7]
    walk = np.load(out / "interpolation.npz")
    digits_test = Digits().labels.test.numpy()
    assert (digits_test[walk["indices"]] == walk["labels"][:, None]).all()  # one class a pair
    flow = flowtrain.load(run_dir / "checkpoints" / "last.pt")
    drawn = flow.sample(2, seed=1, label="7")
    assert drawn.shape == (2, 1, 8, 8) and drawn.dtype == torch.uint8
    assert torch.equal(drawn, flow.sample(2, seed=1, label=7))
    z = flow.encode(Digits().test[:2], label=[1, 2])
    assert torch.equal(flow.decode(z, label=[1, 2]), Digits().test[:2])


@pytest.mark.parametrize("conditional_run", ["glow"], indirect=True)
def test_glows_class_prediction_trains_with_the_model(conditional_run):
    """It starts at zero and only the training loss moves it; the reported bits/dim leave
    it out (test_test_bpd_is_minus_log_p_of_each_image_given_its_own_label)."""
    _, run_dir = conditional_run
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    weights = [value for name, value in saved["model"].items()
               if "classifier" in name and name.endswith("weight")]
    assert weights and all(weight.abs().sum() > 0 for weight in weights)


@pytest.mark.parametrize("conditional_run", ["tarflow", "realnvp"], indirect=True)
def test_guidance_steers_a_conditional_tarflow_and_only_it(conditional_run, tmp_path):
    model, run_dir = conditional_run
    checkpoint = run_dir / "checkpoints" / "last.pt"
    common = ["task=sample", f"ckpt={checkpoint}", "sample.n=3", "sample.label=7",
              "sample.interpolation_pairs=0", "sample.guidance=2"]
    if model != "tarflow":
        result = run_cli(*common, f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path,
                         check=False)
        assert result.returncode == 2
        assert "steers the samples of a class-conditional TarFlow" in (result.stdout
                                                                      + result.stderr)
        return
    run_cli(*common, f"hydra.run.dir={tmp_path / 'guided'}", cwd=tmp_path)
    saved = np.load(tmp_path / "guided" / "samples.npz")
    assert saved["samples"].shape == (3, 1, 8, 8) and saved["labels"].tolist() == [7, 7, 7]
    assert saved["guidance"] == 2 and not saved["guidance_annealed"]  # the file says how
    flow = flowtrain.load(checkpoint)
    guided = flow.sample(3, seed=0, label=7, guidance=2.0)
    assert torch.equal(guided, torch.from_numpy(saved["samples"]))  # the CLI and the API
    assert flow.model.guidance.weight == 0.0  # put back after sampling
    # four steps in, the classes barely differ: compare in model space, before rounding
    def drawn() -> torch.Tensor:
        return flow.model.sample(3, context=torch.full((3,), 7),
                                 generator=torch.Generator().manual_seed(0))
    with guided_sampling(flow.model, 2.0):
        steered = drawn()
    assert not torch.equal(steered, drawn())


# one model is enough: the rows are laid out, and evaluated, outside the model
@pytest.mark.parametrize("conditional_run", ["realnvp"], indirect=True)
def test_task_sample_without_a_label_draws_a_row_per_class(tmp_path, conditional_run):
    _, run_dir = conditional_run
    out = tmp_path / "rows"
    run_cli("task=sample", f"ckpt={run_dir / 'checkpoints' / 'last.pt'}", "sample.n=25",
            "sample.interpolation_pairs=0", f"hydra.run.dir={out}", cwd=tmp_path)
    labels = np.load(out / "samples.npz")["labels"]
    assert labels.tolist() == [digit for digit in range(10) for _ in range(2)]


@pytest.mark.parametrize("conditional_run", ["realnvp"], indirect=True)
def test_task_eval_reproduces_the_conditional_test_bpd(tmp_path, conditional_run):
    _, run_dir = conditional_run
    run_cli("task=eval", f"ckpt={run_dir / 'checkpoints' / 'last.pt'}",
            f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["test_bpd"] == pytest.approx(read_metrics(run_dir)["test_bpd"], rel=1e-9)


def test_a_resumed_conditional_run_sees_the_same_labels(tmp_path):
    common = [*TINY_REALNVP, *CONDITIONAL]
    whole, split = whole_and_resumed(tmp_path, common, stop_at=3)
    assert split["test_nll"] == whole["test_nll"]


def test_conditional_on_data_without_labels_is_refused_before_training(tmp_path):
    result = run_cli("model=realnvp", "model.conditional=true", "data=photo_patches",
                     "data.size=8", "train.steps=2", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "photo_patches has no class labels" in output
    assert "model.conditional=false" in output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_label_for_an_unconditional_model_is_refused(tmp_path):
    run_cli(*TINY_REALNVP, "data=digits", "train.steps=1", f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    result = run_cli("task=sample", f"ckpt={checkpoint}", "sample.label=3",
                     f"hydra.run.dir={tmp_path / 'sampled'}", cwd=tmp_path, check=False)
    assert result.returncode != 0 and "trained without labels" in result.stdout + result.stderr
    assert not (tmp_path / "sampled" / "samples.npz").exists()
    flow = flowtrain.load(checkpoint)
    assert flow.classes is None
    with pytest.raises(ValueError, match="trained without labels"):
        flow.sample(2, label=3)
    with pytest.raises(ValueError, match="trained without labels"):
        flow.bits_per_dim(Digits().test[:2], label=3)


@pytest.mark.parametrize("conditional_run", ["realnvp"], indirect=True)
def test_unknown_or_missing_labels_are_refused_naming_the_classes(tmp_path, conditional_run):
    _, run_dir = conditional_run
    checkpoint = run_dir / "checkpoints" / "last.pt"
    result = run_cli("task=sample", f"ckpt={checkpoint}", "sample.label=cat",
                     f"hydra.run.dir={tmp_path / 'sampled'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert ("sample.label='cat' is not a class of this model; give a class name or an index "
            "from 0 to 9: 0, 1, 2") in result.stdout + result.stderr
    flow = flowtrain.load(checkpoint)
    with pytest.raises(ValueError, match="this flow is class-conditional: pass label="):
        flow.sample(4)
    with pytest.raises(ValueError, match="label=10 is not a class"):
        flow.sample(4, label=10)
    with pytest.raises(ValueError, match="label= gives 3 labels for 2 examples"):
        flow.bits_per_dim(Digits().test[:2], label=[1, 2, 3])


def test_denoised_samples_are_drawn_and_scored_under_their_labels():
    """Gaussian dequantization's denoising step takes the score of p(y | label), chunk by
    chunk with the labels alongside: a conditional model given no labels would refuse."""
    from flowtrain.dequant import GaussianDequantization
    from flowtrain.flows.tarflow import TarFlow
    from flowtrain.likelihood import DENOISE_CHUNK, Identity, Preprocessing

    torch.manual_seed(0)
    flow = TarFlow((1, 4, 4), width=8, blocks=2, layers_per_block=1, head_dim=4,
                   conditional=True, n_classes=3).eval()
    preprocessing = Preprocessing(GaussianDequantization(17), Identity())
    n = DENOISE_CHUNK + 3  # two chunks, the second shorter
    labels = torch.arange(n) % 3
    samples = preprocessing.sample(flow, n, generator=torch.Generator().manual_seed(1),
                                   context=labels)
    assert samples.shape == (n, 1, 4, 4) and samples.min() >= 0 and samples.max() <= 16


def test_a_rank_scores_its_slice_of_the_batch_under_its_slice_of_the_labels():
    """Under torchrun every rank preprocesses the global batch and keeps its slice
    (``keep``): the labels must be sliced with the images."""
    from flowtrain.dequant import UniformDequantization
    from flowtrain.flows.realnvp import RealNVP
    from flowtrain.likelihood import Identity, Preprocessing, negative_log_likelihood

    torch.manual_seed(0)
    flow = RealNVP((1, 4, 4), n_filters=4, n_blocks=1, conditional=True, n_classes=3)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    preprocessing = Preprocessing(UniformDequantization(17), Identity())
    x = torch.randint(0, 17, (6, 1, 4, 4)).float()
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    whole = negative_log_likelihood(flow, preprocessing, x, torch.Generator().manual_seed(1),
                                    context=labels)
    kept = negative_log_likelihood(flow, preprocessing, x, torch.Generator().manual_seed(1),
                                   keep=slice(2, 5), context=labels)
    assert torch.allclose(kept, whole[2:5])


def test_an_image_model_from_before_conditional_resumes_as_unconditional():
    """Checkpoints written before model.conditional have none: they meant false, so they
    resume with it and are refused with true; point models never get the key."""
    from flowtrain.checkpoint_config import check_same_setup
    from flowtrain.errors import CheckpointError

    realnvp = {"_target_": "flowtrain.flows.realnvp.RealNVP", "n_filters": 8}
    saved = {"model": realnvp, "data": {"n_val": 150}, "dequant": {}}
    check_same_setup(saved, {**saved, "model": {**realnvp, "conditional": False}},
                     Path("last.pt"))
    with pytest.raises(CheckpointError, match="model.conditional: saved False, now True"):
        check_same_setup(saved, {**saved, "model": {**realnvp, "conditional": True}},
                         Path("last.pt"))
    points = {"_target_": "flowtrain.flows.autoregressive.AutoregressiveFlow"}
    check_same_setup({**saved, "model": points}, {**saved, "model": points}, Path("last.pt"))


def test_sample_classes_are_checked_before_training(tmp_path):
    result = run_cli(*TINY_REALNVP, *CONDITIONAL, "train.sample_classes=[3,cat]",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "train.sample_classes: label='cat' is not a class" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_conditional_on_pictures_that_cannot_all_be_labelled_says_why(tmp_path):
    from test_image_folder import write_pictures

    from flowtrain.build import conditioning_classes
    from flowtrain.data.image_folder import ImageFolderData
    from flowtrain.errors import ConfigError

    write_pictures(tmp_path / "train", 4, classes=("cats", "dogs"))
    write_pictures(tmp_path / "test", 2, classes=("cats", "wolves"))
    data = ImageFolderData(str(tmp_path / "train"), size=4, test_root=str(tmp_path / "test"))
    cfg = OmegaConf.create({"model": {"conditional": True}})
    with pytest.raises(ConfigError, match=r"train has no class labels \(data.test_root=.* has "
                                          r"classes the training pictures do not: wolves"):
        conditioning_classes(cfg, data)


def test_the_classes_come_from_the_data_and_travel_in_the_checkpoint(tmp_path):
    """A model of three picture folders samples with the folders gone, and refuses data of
    other classes (digits) rather than scoring them under the wrong labels."""
    from test_image_folder import write_pictures

    folder = tmp_path / "pictures"
    write_pictures(folder, 24, classes=("cats", "dogs", "zebras"))
    run_cli(*TINY_REALNVP, "model.conditional=true", "data=image_folder",
            f"data.root={folder}", "data.size=8", "data.channels=1", "data.n_test=6",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["data_shape"]["classes"] == ["cats", "dogs", "zebras"]
    assert read_metrics(tmp_path / "run")["n_classes"] == 3
    for picture in folder.rglob("*.*"):
        picture.unlink()
    run_cli("task=sample", f"ckpt={checkpoint}", "sample.n=2", "sample.label=zebras",
            "sample.interpolation_pairs=0", f"hydra.run.dir={tmp_path / 'sampled'}",
            cwd=tmp_path)
    assert np.load(tmp_path / "sampled" / "samples.npz")["labels"].tolist() == [2, 2]
    result = run_cli("task=eval", f"ckpt={checkpoint}", "data=digits",
                     f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert ("holds a class-conditional model of the classes cats, dogs, zebras; digits has "
            "0, 1, 2") in result.stdout + result.stderr
