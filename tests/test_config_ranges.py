"""Every numeric key of every schema, set to 0, -1, NaN and infinity: refused before any
data is read with a message naming the key, or accepted, and then each accepted value is
run for real (training, sampling, or loading the data set it configures)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from test_image_folder import write_pictures
from test_imagenet import write_npz
from test_images import write_fake_cifar10, write_fake_mnist

import flowtrain.train  # noqa: F401 - registers the schemas
from flowtrain.config import SCHEMAS, Config, SampleConfig, TrainConfig, config_dir
from flowtrain.config_ranges import RANGES, range_errors, unranged_keys

BAD_VALUES = (0, -1, math.nan, math.inf)


def _options_of(group: str, schema_name: str) -> list[str]:
    """Every YAML option of ``group`` built on the schema ``schema_name``."""
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml")
                  if f"/schema/{group}/{schema_name}@" in path.read_text())


def _numeric_fields(schema: type) -> list[dataclasses.Field]:
    return [item for item in dataclasses.fields(schema)
            if ("int" in str(item.type) or "float" in str(item.type))
            and "list" not in str(item.type)]


# (prefix, option override or None, schema) for every section the check knows
SECTIONS = [(group, f"{group}={option}", schema)
            for group, options in SCHEMAS.items() for name, schema in options.items()
            for option in _options_of(group, name)]
SECTIONS += [("train", None, TrainConfig), ("sample", None, SampleConfig), ("", None, Config)]
POINT_DATA = ("data=gmm1d", "data=toy2d", "data=array")


@pytest.fixture(scope="module")
def walked() -> set[tuple[str, str | None, object]]:
    """Walks every (key, bad value) of every option; returns the accepted (key, option,
    value) that differ from the option's own value: each must then run."""
    accepted = set()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for prefix, option, schema in SECTIONS:
            base = [option] if option else []
            if option in POINT_DATA:
                base.append("model=mixture_cdf")
            composed = compose("config", overrides=base)
            for item in _numeric_fields(schema):
                key = f"{prefix}.{item.name}" if prefix else item.name
                values = BAD_VALUES if "float" in str(item.type) else BAD_VALUES[:2]
                for value in values:
                    cfg = composed.copy()
                    try:  # what Hydra does with key=value on the command line
                        OmegaConf.update(cfg, key, value, merge=True)
                    except OmegaConfBaseException as error:
                        assert key in str(error), (key, value, str(error))
                        continue
                    errors = range_errors(cfg)
                    if errors:
                        assert [line for line in errors if line.startswith(f"{key}=")], \
                            (key, value, errors)
                        assert len(errors) == 1, errors  # the composed defaults pass
                    elif value != OmegaConf.select(composed, key):
                        accepted.add((key, option, value))
    return accepted


def test_every_numeric_key_of_every_schema_has_a_range():
    assert unranged_keys() == []
    every = {schema for options in SCHEMAS.values() for schema in options.values()}
    assert every | {TrainConfig, SampleConfig, Config} <= set(RANGES)


# Tiny runs that carry every accepted value at once, one option of each group per run.
TINY_IMAGES = ["train.steps=2", "train.batch_size=4", "train.eval_every=2",
               "train.sample_every=2", "train.checkpoint_every=2", "train.log_every=1",
               "train.eval_batch_size=64", "train.n_samples=4", "device=cpu"]
RUNS = {
    "realnvp": ["model=realnvp", "model.n_filters=4", "model.n_blocks=0",
                "model.checkerboard_in=1", "model.channelwise=1", "model.checkerboard_out=1",
                "data=digits", "data.n_val=0", "dequant=uniform", "dequant.logit_alpha=0",
                "optim=adam", "optim.warmup_steps=0", "optim.warmup_epochs=0",
                "optim.min_lr_ratio=0", "train.grad_clip=0", *TINY_IMAGES],
    "glow": ["model=glow", "model.n_filters=4", "model.n_blocks=0", "model.steps=1",
             "data=photo_patches", "data.n_val=0", "data.size=8", "dequant=auto",
             "dequant.logit_alpha=0", "optim=adamw", "optim.weight_decay=0",
             "optim.warmup_steps=0", "optim.warmup_epochs=0", "optim.min_lr_ratio=0",
             *TINY_IMAGES],
    "pixelcnn_arflow": ["model=pixelcnn_arflow", "model.n_filters=4", "model.n_blocks=0",
                        "model.n_components=2", "data=digits", "dequant=variational",
                        "dequant.n_blocks=0", "dequant.logit_alpha=0", "dequant.n_filters=4",
                        "dequant.n_couplings=1", "dequant.context_channels=4", "optim=adamax",
                        "optim.warmup_steps=0", "optim.warmup_epochs=0",
                        "optim.min_lr_ratio=0", *TINY_IMAGES],
    "flowpp": ["model=flowpp", "model.n_filters=4", "model.n_blocks=1", "model.heads=1",
               "model.n_components=2", "model.column_in=0", "model.channelwise=0",
               "model.column_out=1", "data=digits", "dequant=flowpp", "dequant.n_blocks=1",
               "dequant.logit_alpha=0", "dequant.dropout=0", "dequant.n_filters=4",
               "dequant.heads=1",
               "dequant.n_components=2", "dequant.n_couplings=1", "dequant.context_channels=4",
               "optim=sgd", "optim.warmup_steps=0", "optim.warmup_epochs=0",
               "optim.min_lr_ratio=0", "optim.momentum=0", *TINY_IMAGES],
    "flowpp_columns": ["model=flowpp", "model.n_filters=4", "model.n_blocks=1",
                       "model.heads=1", "model.n_components=2", "model.column_out=0",
                       "data=digits", *TINY_IMAGES],
    "arflow2d": ["model=arflow2d", "model.hidden_layers=0", "model.n_components=2",
                 "data=toy2d", "data.noise=0", "data.n_val=0",
                 "data.n_train=64", "data.n_test=32", "train.steps=0", "train.batch_size=16",
                 "train.n_samples=16",
                 "device=cpu"],
    "mixture_cdf": ["model=mixture_cdf", "data=gmm1d", "data.n_val=0", "data.n_train=64",
                    "data.n_test=32", "train.steps=2", "train.batch_size=16",
                    "train.n_samples=16", "device=cpu"],
}
SAMPLED = ["sample.interpolation_pairs=0"]  # task=sample of the realnvp run
# accepted by the table, refused by the component that knows the other keys, naming it
REFUSED_WHEN_BUILT = {
    "dequant.n_blocks": [*RUNS["flowpp"][:-len(TINY_IMAGES)], "dequant.n_blocks=0",
                         *TINY_IMAGES]}


def _data_files(tmp_path: Path) -> dict[str, list[str]]:
    """Small files of every data set read from disk, and the keys that read them."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "points.npz", train=rng.normal(size=(20, 2)),
             test=rng.normal(size=(5, 2)))
    np.savez(tmp_path / "images.npz", train=rng.integers(0, 256, (20, 4, 4), np.uint8),
             test=rng.integers(0, 256, (5, 4, 4), np.uint8))
    write_fake_cifar10(tmp_path / "cifar")
    for folder in ("MNIST", "FashionMNIST"):
        write_fake_mnist(tmp_path / "mnist", folder=folder)
    write_pictures(tmp_path / "pictures", 8)
    write_pictures(tmp_path / "test_pictures", 3)
    write_npz(tmp_path / "imagenet")
    write_npz(tmp_path / "imagenet64", size=64)
    return {"data=array": [f"data.path={tmp_path / 'points.npz'}"],
            "data=image_array": [f"data.path={tmp_path / 'images.npz'}"],
            "data=cifar10": [f"data.root={tmp_path / 'cifar'}"],
            "data=image_folder": [f"data.root={tmp_path / 'pictures'}",
                                  f"data.test_root={tmp_path / 'test_pictures'}",
                                  "data.size=4"],
            "data=imagenet32": [f"data.root={tmp_path / 'imagenet'}"],
            "data=imagenet64": [f"data.root={tmp_path / 'imagenet64'}"],
            "data=mnist": [f"data.root={tmp_path / 'mnist'}"],
            "data=fashion_mnist": [f"data.root={tmp_path / 'mnist'}"]}


def test_every_accepted_value_is_run_or_loaded(walked, tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    """The walk's accepted values are each carried by a tiny run below, or (for a data set
    read from files) set while that data set is loaded from small files of its format."""
    files = _data_files(tmp_path)
    loaded = []
    for key, option, value in sorted(walked, key=str):
        word = f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        if option in files:
            loaded.append((option, word))
        else:
            assert any(word in words and (option is None or option in words)
                       for words in [*RUNS.values(), *REFUSED_WHEN_BUILT.values(),
                                     SAMPLED]), \
                f"{word} ({option}) is accepted, and no run below carries it"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for option, word in loaded:
            cfg = compose("config", overrides=[option, *files[option], word,
                                               *(["model=mixture_cdf"]
                                                 if option in POINT_DATA else [])])
            assert not range_errors(cfg)
            data = instantiate(cfg.data)
            assert len(data.train) and len(data.test), (option, word)


@pytest.mark.parametrize("name", list(RUNS))
def test_accepted_values_train(name, tmp_path):
    run_cli(*RUNS[name], f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert (tmp_path / "run" / "metrics.json").exists()
    if name == "realnvp":
        run_cli("task=sample", f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.pt'}",
                "sample.n=2", *SAMPLED, f"hydra.run.dir={tmp_path / 'sampled'}", cwd=tmp_path)
        assert (tmp_path / "sampled" / "samples.npz").exists()


@pytest.mark.parametrize("words, key", [
    (["train.batch_size=0"], "train.batch_size"),
    (["optim.lr=nan"], "optim.lr"),
    (["model=tarflow", "model.drop_label=1"], "model.drop_label"),
    (["data.shift=inf"], "data.shift"),
    (["optim.betas=[0.9,1.5]"], "optim.betas"),
    (["task=sample", "ckpt=nowhere.pt", "sample.temperature=0"], "sample.temperature"),
])
def test_a_value_out_of_range_stops_the_command_before_anything_is_written(tmp_path, words,
                                                                             key):
    result = run_cli(*words, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{key} must be" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no log, no data read


@pytest.mark.parametrize("key", list(REFUSED_WHEN_BUILT))
def test_a_value_only_its_component_refuses_is_named(key, tmp_path):
    result = run_cli(*REFUSED_WHEN_BUILT[key], f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert key in result.stdout


def test_a_sweep_with_a_value_out_of_range_stops_before_any_job(tmp_path):
    words = [word for word in RUNS["mixture_cdf"] if word != "data.n_val=0"]
    result = run_cli("-m", *words, "data.n_val=16", "train.batch_size=8,0",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.batch_size=0: train.batch_size must be at least 1" in result.stderr
    assert not (tmp_path / "sweep").exists()  # no job ran


def test_a_flow_with_no_step_is_refused_naming_its_keys(tmp_path):
    result = run_cli(*RUNS["flowpp_columns"], "model.column_in=0", "model.channelwise=0",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.column_out must be at least 0, and at least one step" in result.stdout
