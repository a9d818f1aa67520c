"""Image data through the real loaders, and RealNVP through the real command.

The fake MNIST and CIFAR-10 files are written in torchvision's own on-disk formats (IDX
files; pickled python batches) and read by torchvision's own classes. CIFAR-10's loader
also checks each file's MD5 against the published data set, which no fake file can match,
so for CIFAR-10 alone that check is turned off for the test's run (monkeypatch).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_cli, whole_and_resumed

from flowtrain.data.images import Digits, TorchvisionImages
from flowtrain.errors import DataError

TINY_REALNVP = ["model=realnvp", "model.n_filters=8", "model.n_blocks=1",
                "model.checkerboard_in=2", "model.channelwise=1", "model.checkerboard_out=1",
                "train.steps=6", "train.batch_size=4", "train.eval_every=3",
                "train.sample_every=3", "train.checkpoint_every=3", "train.log_every=3",
                "train.eval_batch_size=16"]


def write_idx(path: Path, values: np.ndarray) -> None:
    """An IDX file: magic (0, 0, type 0x08 = uint8, n_dims), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, values.ndim)
    header += struct.pack(f">{values.ndim}I", *values.shape)
    path.write_bytes(header + values.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, folder: str = "MNIST", n: int = 12, size: int = 8) -> None:
    """Random images whose first pixel is their label, so a test can see they stay paired."""
    generator = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = generator.integers(0, 256, (count, size, size))
        labels = generator.integers(0, 10, count)
        images[:, 0, 0] = labels
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


CIFAR10_CLASSES = tuple(f"class {label}" for label in range(10))


def write_fake_cifar10(root: Path, per_batch: int = 4) -> None:
    """Random images whose first red value is their label."""
    generator = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        rows = generator.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        labels = generator.integers(0, 10, per_batch)
        rows[:, 0] = labels
        (folder / name).write_bytes(pickle.dumps({"data": rows, "labels": labels.tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))


def assert_labels_follow_first_pixel(data) -> None:
    """Every split's labels are int64, one per image, and equal to their image's first
    value, as the fake files were written."""
    for split in ("train", "val", "test"):
        images, labels = data.split(split), data.split_labels(split)
        assert labels.dtype == torch.int64 and labels.shape == (len(images),), split
        assert torch.equal(images[:, 0, 0, 0].long(), labels), split


def test_mnist_files_load_through_torchvision(tmp_path):
    write_fake_mnist(tmp_path)
    data = TorchvisionImages("mnist", root=str(tmp_path), n_val=2)
    assert data.train.shape == (10, 1, 8, 8) and data.test.shape == (6, 1, 8, 8)
    assert data.val.shape == (2, 1, 8, 8)
    assert data.train.dtype == torch.uint8 and data.levels == 256


def test_fewer_bits_keep_the_top_bits_and_count_their_levels(tmp_path):
    write_fake_mnist(tmp_path)
    full = TorchvisionImages("mnist", root=str(tmp_path), n_val=0)
    five = TorchvisionImages("mnist", root=str(tmp_path), n_val=0, bits=5)
    assert five.levels == 32 and int(five.train.max()) <= 31
    assert torch.equal(five.train, full.train // 8) and torch.equal(five.test, full.test // 8)
    with pytest.raises(DataError, match="data.bits must be between 1 and 8"):
        TorchvisionImages("mnist", root=str(tmp_path), bits=9)


def test_mnist_labels_stay_with_their_images_through_the_validation_split(tmp_path):
    write_fake_mnist(tmp_path, n=40)
    data = TorchvisionImages("mnist", root=str(tmp_path), n_val=7)
    assert data.n_classes == 10 and data.labels.classes[3] == "3 - three"
    assert len(data.labels.val) == 7
    assert_labels_follow_first_pixel(data)


def test_cifar10_labels_and_class_names_come_from_its_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    write_fake_cifar10(tmp_path, per_batch=6)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    data = TorchvisionImages("cifar10", root=str(tmp_path), n_val=5)
    assert data.labels.classes == CIFAR10_CLASSES
    assert (len(data.train), len(data.val), len(data.test)) == (25, 5, 6)
    assert_labels_follow_first_pixel(data)


def test_fashion_mnist_files_load_through_torchvision(tmp_path):
    write_fake_mnist(tmp_path, folder="FashionMNIST")
    data = TorchvisionImages("fashion_mnist", root=str(tmp_path), n_val=0)
    assert data.train.shape == (12, 1, 8, 8) and data.val is None


def test_missing_data_set_names_folder_and_flag(tmp_path):
    with pytest.raises(DataError, match=r"data.download=true") as error:
        TorchvisionImages("cifar10", root=str(tmp_path / "nowhere"))
    assert str((tmp_path / "nowhere").resolve() / "cifar-10-batches-py") in str(error.value)


def test_digits_split_is_fixed():
    torch.manual_seed(123)  # the splits do not depend on the global random state
    first, second = Digits(), Digits()
    assert first.train.shape == (1350, 1, 8, 8) and first.val.shape == (150, 1, 8, 8)
    assert first.test.shape == (297, 1, 8, 8)
    for split in ("train", "val", "test"):
        assert torch.equal(first.split(split), second.split(split)), split
    assert first.levels == 17 and int(first.train.max()) == 16
    # the validation images are carved from the 1500 training images
    everything = Digits(n_val=0).train
    assert everything.shape == (1500, 1, 8, 8)
    assert sorted(map(bytes, everything.numpy())) == sorted(
        map(bytes, torch.cat([first.train, first.val]).numpy()))


def test_digits_carry_sklearns_labels_with_their_images():
    """Each (image, label) pair, over all three splits, is one of scikit-learn's pairs,
    and every one of them is there once."""
    from sklearn.datasets import load_digits

    data = Digits()
    assert data.labels.classes == tuple("0123456789") and data.n_classes == 10
    pairs = [(bytes(image), int(label)) for split in ("train", "val", "test")
             for image, label in zip(data.split(split).numpy(),
                                     data.split_labels(split).tolist(), strict=True)]
    digits = load_digits()
    expected = [(bytes(image.astype(np.uint8)[None]), int(label))
                for image, label in zip(digits.images, digits.target, strict=True)]
    assert sorted(pairs) == sorted(expected)


def _sample_images(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tb"))
    accumulator.Reload()
    return accumulator.Images("samples")


def test_realnvp_trains_on_digits_end_to_end(tmp_path):
    run_cli(*TINY_REALNVP, "data=digits", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics["steps"] == 6 and 0 < metrics["test_bpd"] < 8
    samples = _sample_images(tmp_path)
    assert [image.step for image in samples] == [3, 6]
    # 64 samples of 8x8, enlarged 4x, in an 8x8 grid with 1-pixel padding
    assert (samples[-1].height, samples[-1].width) == (8 * 33 + 1, 8 * 33 + 1)


def test_realnvp_trains_on_fake_mnist_files(tmp_path):
    write_fake_mnist(tmp_path / "data")
    run_cli(*TINY_REALNVP, "data=mnist", f"data.root={tmp_path / 'data'}", "data.n_val=2",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert read_metrics(tmp_path / "run")["steps"] == 6
    assert _sample_images(tmp_path / "run")


def test_missing_mnist_fails_before_training(tmp_path):
    result = run_cli(*TINY_REALNVP, "data=mnist", f"data.root={tmp_path / 'empty'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "data.download=true" in out and "Traceback" not in out


def test_odd_sized_images_name_the_constraint(tmp_path):
    np.savez(tmp_path / "odd.npz", train=np.zeros((8, 6, 5), np.uint8),
             test=np.zeros((4, 6, 5), np.uint8))
    result = run_cli(*TINY_REALNVP, "data=image_array",
                     f"data.path={tmp_path / 'odd.npz'}", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "RealNVP needs even height and width" in result.stdout + result.stderr
    assert "6x5" in result.stdout + result.stderr


def test_array_images_train_with_their_levels(tmp_path):
    generator = np.random.default_rng(0)
    np.savez(tmp_path / "images.npz", train=generator.integers(0, 4, (16, 2, 4, 4)),
             test=generator.integers(0, 4, (8, 2, 4, 4)))
    run_cli(*TINY_REALNVP, "data=image_array", f"data.path={tmp_path / 'images.npz'}",
            "data.levels=4", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["steps"] == 6 and np.isfinite(metrics["test_bpd"])


def test_channels_last_image_arrays_are_recognized(tmp_path):
    from flowtrain.data.array import ImageArrayData

    np.savez(tmp_path / "hwc.npz", train=np.zeros((4, 16, 16, 3), np.uint8),
             test=np.zeros((2, 16, 16, 3), np.uint8))
    assert ImageArrayData(str(tmp_path / "hwc.npz")).event_shape == (3, 16, 16)


def test_levels_only_for_image_arrays(tmp_path):
    from flowtrain.data.array import ArrayData

    np.savez(tmp_path / "points.npz", train=np.zeros((4, 2)), test=np.zeros((2, 2)))
    with pytest.raises(DataError, match="data.levels is for images"):
        ArrayData(str(tmp_path / "points.npz"), levels=4)


def test_an_array_of_the_other_kind_names_the_option_to_use(tmp_path):
    """data=array trains with the point settings and data=image_array with the image ones,
    so a file of the other kind is refused at load time, naming the option that fits."""
    from flowtrain.data.array import ArrayData, ImageArrayData

    np.savez(tmp_path / "images.npz", train=np.zeros((4, 8, 8), np.uint8),
             test=np.zeros((2, 8, 8), np.uint8))
    np.savez(tmp_path / "points.npz", train=np.zeros((4, 2)), test=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"holds images .*use data=image_array"):
        ArrayData(str(tmp_path / "images.npz"))
    with pytest.raises(DataError, match=r"holds points .*use data=array"):
        ImageArrayData(str(tmp_path / "points.npz"))


def test_resumed_image_run_matches_an_uninterrupted_one(tmp_path):
    """RealNVP on digits (dequantization noise, ActNorm): 3 steps, then resumed to 6,
    ends with the same test NLL, bit for bit, as 6 steps in one go."""
    common = [*TINY_REALNVP, "data=digits", "optim.schedule=constant", "device=cpu"]
    whole, split = whole_and_resumed(tmp_path, common, stop_at=3)
    assert split["steps"] == whole["steps"] == 6
    assert split["test_nll"] == whole["test_nll"]


TINY_PIXELCNN = ["model=pixelcnn_arflow", "model.n_filters=6", "model.n_blocks=1",
                 "model.n_components=2", "train.steps=4", "train.batch_size=4",
                 "train.eval_every=2", "train.sample_every=4", "train.checkpoint_every=2",
                 "train.log_every=2", "train.eval_batch_size=64",
                 "train.n_samples=4"]  # a grid of 4: PixelCNN sampling is a pass per value


def test_pixelcnn_flow_trains_on_digits_end_to_end(tmp_path):
    run_cli(*TINY_PIXELCNN, "data=digits", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics["steps"] == 4 and np.isfinite(metrics["test_bpd"])
    assert _sample_images(tmp_path)[-1].step == 4


TINY_FLOWPP = ["model=flowpp", "model.n_filters=4", "model.n_blocks=1", "model.n_components=2",
               "model.heads=2", "model.column_in=1", "model.channelwise=1",
               "model.column_out=1", "train.steps=4", "train.batch_size=4",
               "train.eval_every=2", "train.sample_every=4", "train.checkpoint_every=2",
               "train.log_every=2", "train.eval_batch_size=64"]


TINY_TARFLOW = ["model=tarflow", "model.width=8", "model.blocks=2", "model.layers_per_block=1",
                "model.head_dim=4", "train.steps=4", "train.batch_size=4",
                "train.eval_every=2", "train.sample_every=4", "train.checkpoint_every=2",
                "train.log_every=2", "train.eval_batch_size=64"]


@pytest.mark.parametrize("model, steps", [("realnvp", 6), ("pixelcnn_arflow", 4),
                                          ("flowpp", 4), ("tarflow", 4)])
def test_image_flows_train_on_fake_cifar10_files(tmp_path, monkeypatch, model, steps):
    import torchvision.datasets.cifar as cifar

    overrides = {"realnvp": TINY_REALNVP, "pixelcnn_arflow": TINY_PIXELCNN,
                 "flowpp": TINY_FLOWPP, "tarflow": TINY_TARFLOW}[model]
    write_fake_cifar10(tmp_path / "data")
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    augmented = ["data.shift=0.1", "data.hflip=true"] if model == "realnvp" else []
    run_cli(*overrides, "data=cifar10", f"data.root={tmp_path / 'data'}", "data.n_val=4",
            *augmented, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    metrics = read_metrics(tmp_path / "run")
    assert np.isfinite(metrics["test_bpd"]) and metrics["steps"] == steps
    per_row = {"pixelcnn_arflow": 2}.get(model, 8)  # 64 samples, or 4
    assert _sample_images(tmp_path / "run")[-1].width == 32 * per_row + per_row + 1


def test_a_weight_averaged_run_resumes_exactly_and_is_evaluated_with_its_average(tmp_path):
    """train.ema_decay on RealNVP (ActNorm) on digits: the average is in the checkpoint, a
    resumed run ends with the same numbers bit for bit, and task=eval of its checkpoint
    reproduces its test_bpd, which is measured with the averaged weights."""
    import json

    common = [*TINY_REALNVP, "data=digits", "train.ema_decay=0.9", "device=cpu"]
    whole, split = whole_and_resumed(tmp_path, common, stop_at=3)
    for key in ("test_nll", "test_bpd", "val_bpd", "best_val_bpd", "best_step",
                "test_bpd_at_best", "train_bpd"):
        assert split[key] == whole[key], key
    saved = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["average"]["updates"] == 6
    assert any(not torch.equal(saved["average"]["model"][name], value)
               for name, value in saved["model"].items())
    run_cli("task=eval", f"ckpt={tmp_path / 'split' / 'checkpoints' / 'last.pt'}",
            f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["test_bpd"] == pytest.approx(split["test_bpd"], abs=1e-6)


def test_photo_patches_are_whole_non_overlapping_tiles_of_the_two_photos():
    from sklearn.datasets import load_sample_images

    from flowtrain.data.images import PhotoPatches

    data = PhotoPatches()
    assert data.train.shape == (370, 3, 32, 32) and data.val.shape == (50, 3, 32, 32)
    assert data.test.shape == (100, 3, 32, 32) and data.levels == 256
    assert torch.equal(data.test, PhotoPatches().test)  # a fixed split
    china = torch.from_numpy(load_sample_images().images[0].copy())
    first_tile = china[:32, :32].permute(2, 0, 1)
    everything = torch.cat([data.train, data.val, data.test])
    assert (everything == first_tile).flatten(1).all(dim=1).sum() == 1  # there, once
    assert data.labels is None and data.n_classes == 0  # no classes
    assert PhotoPatches(size=16, n_test=10, n_val=0).train.shape == (2070, 3, 16, 16)


def test_realnvp_trains_on_photo_patches(tmp_path):
    run_cli(*TINY_REALNVP, "data=photo_patches", "data.size=8", f"hydra.run.dir={tmp_path}",
            cwd=tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics["steps"] == 6 and 0 < metrics["test_bpd_at_best"] < 16


@pytest.mark.parametrize("overrides", [TINY_FLOWPP, TINY_TARFLOW], ids=["flowpp", "tarflow"])
def test_flowpp_and_tarflow_train_on_mnist_sized_files(tmp_path, overrides):
    """28x28: Flow++'s column pairs of 14, a squeeze to 14x14, column pairs of 7;
    TarFlow's 196 patches of 2x2."""
    write_fake_mnist(tmp_path / "data", size=28)
    run_cli(*overrides, "data=mnist", f"data.root={tmp_path / 'data'}", "data.n_val=2",
            "train.n_samples=4", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["steps"] == 4 and np.isfinite(metrics["test_bpd"])
