"""data=imagenet32|imagenet64 on tiny files the test writes in both releases' formats: the
release detected and recorded, the npz rows' colour planes and labels, the memory check,
the in-place validation split, and a CLI run."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_cli
from PIL import Image

import flowtrain.data.imagenet as imagenet
from flowtrain.data.base import carve_validation, carve_validation_in_place
from flowtrain.data.imagenet import DownsampledImageNet
from flowtrain.errors import DataError


def write_folders(root, size=32, n_train=14, n_valid=4) -> np.ndarray:
    """van den Oord et al.'s layout; returns the validation images [N, 3, size, size]."""
    rng = np.random.default_rng(0)
    valid = []
    for split, n in ((f"train_{size}x{size}", n_train), (f"valid_{size}x{size}", n_valid)):
        (root / split).mkdir(parents=True)
        for index in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / f"{index:05d}.png")
            if split.startswith("valid"):
                valid.append(pixels.transpose(2, 0, 1))
    return np.stack(valid)


def write_npz(root, size=32, batches=(5, 6), n_valid=4) -> np.ndarray:
    """Chrabaszcz et al.'s layout: rows of the red plane, then green, then blue, and
    ``labels`` 1 .. 1000 (the first batch starts with both ends), which each image's first
    two red values spell (``label_in_pixels``); returns the first training batch's images
    [N, 3, size, size]."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    first = None
    for name, n in [*((f"train_data_batch_{i + 1}", n) for i, n in enumerate(batches)),
                    ("val_data", n_valid)]:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        labels = rng.integers(1, 1001, n)
        if first is None:
            labels[:2] = 1, 1000
        images[:, 0, :2, 0] = np.stack([(labels - 1) % 256, (labels - 1) // 256], axis=1)
        rows = np.concatenate([images[..., channel].reshape(n, -1) for channel in range(3)],
                              axis=1)
        np.savez(root / f"{name}.npz", data=rows, labels=labels, mean=rows.mean(axis=0))
        first = images.transpose(0, 3, 1, 2) if first is None else first
    return first


def label_in_pixels(images: torch.Tensor) -> torch.Tensor:
    """The 0-based label ``write_npz`` wrote into each image's first two red values."""
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()


def test_the_png_release_is_detected_and_its_valid_folder_is_the_test_split(tmp_path):
    valid = write_folders(tmp_path)
    data = DownsampledImageNet(str(tmp_path), size=32, n_val=3)
    assert data.version.startswith("van den Oord")
    assert data.train.shape == (11, 3, 32, 32) and data.val.shape == (3, 3, 32, 32)
    assert torch.equal(data.test, torch.from_numpy(valid))
    assert data.labels is None  # this release has no labels


def test_the_npz_release_keeps_its_colour_planes_and_batch_order(tmp_path):
    """11 batches: batch 10 follows batch 9 (numeric, not alphabetical, order), and the
    validation file may sit in a folder of its own, as the release's zips unpack."""
    first = write_npz(tmp_path / "train", batches=(2, *range(1, 11)), n_valid=4)
    (tmp_path / "val").mkdir()
    (tmp_path / "train" / "val_data.npz").rename(tmp_path / "val" / "val_data.npz")
    data = DownsampledImageNet(str(tmp_path), size=32, n_val=0)
    assert data.version.startswith("Chrabaszcz")
    assert data.train.shape == (57, 3, 32, 32) and data.test.shape == (4, 3, 32, 32)
    assert torch.equal(data.train[:2], torch.from_numpy(first))
    last = np.load(tmp_path / "train" / "train_data_batch_11.npz")["data"]
    assert torch.equal(data.train[-10:].flatten(1), torch.from_numpy(last))


def test_the_npz_labels_are_kept_0_based_with_their_images(tmp_path):
    """Through the in-place validation carve too: the labels are carved by the same
    permutation."""
    first = write_npz(tmp_path, batches=(5, 6, 7), n_valid=4)
    data = DownsampledImageNet(str(tmp_path), size=32, n_val=5)
    assert data.n_classes == 1000 and data.labels.classes[999] == "999"
    assert (len(data.train), len(data.val), len(data.test)) == (13, 5, 4)
    for split in ("train", "val", "test"):
        labels = data.split_labels(split)
        assert labels.dtype == torch.int64 and len(labels) == len(data.split(split))
        assert torch.equal(labels, label_in_pixels(data.split(split))), split
    everything = torch.cat([data.labels.train, data.labels.val])
    assert {0, 999} <= set(everything.tolist())  # the release's 1 and 1000
    assert label_in_pixels(torch.from_numpy(first))[:2].tolist() == [0, 999]


@pytest.mark.parametrize("labels, message", [
    (None, "has no `labels` array"),
    (np.arange(1, 5), r"`labels` has shape \(4,\).*expected \(5,\) integers"),
    (np.full(5, 1.0), r"dtype float64; expected \(5,\) integers"),
    (np.arange(0, 5), "runs 0 .. 4; expected the release's classes 1 .. 1000"),
])
def test_npz_labels_that_are_missing_or_wrong_leave_the_data_unlabelled(tmp_path, caplog,
                                                                         labels, message):
    """Repackaged batches still train an unconditional model; a conditional one is then
    refused with the reason (``unlabelled_because``), which the log also gives."""
    write_npz(tmp_path, batches=(5,))
    batch = tmp_path / "train_data_batch_1.npz"
    rows = np.load(batch)["data"]
    np.savez(batch, data=rows, **({} if labels is None else {"labels": labels}))
    with caplog.at_level(logging.WARNING):
        data = DownsampledImageNet(str(tmp_path), n_val=1)
    assert data.labels is None and len(data.train) == 4
    assert re.search(message, data.unlabelled_because) and str(batch) in data.unlabelled_because
    assert "without class labels" in caplog.text


def test_the_in_place_validation_split_is_the_usual_one():
    images = torch.arange(50 * 2, dtype=torch.uint8).view(50, 2)
    expected = carve_validation(images.clone(), 7, "x")
    given = images.clone()
    got = carve_validation_in_place(given, 7, "x", chunk=4)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert got[0].untyped_storage().data_ptr() == given.untyped_storage().data_ptr()


def test_too_little_memory_is_refused_with_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(imagenet, "available_memory", lambda: 12_000_000_000)
    with pytest.raises(DataError, match=r"1,281,167 images of 3x64x64 take 15\.7 GB as uint8 "
                                        r"\(and 0\.8 GB more while reading\), and only 12\.0 "
                                        r"GB of memory is available"):
        imagenet.check_fits_in_memory(1_281_167, 64, 65_536 * 3 * 64 * 64, "imagenet64")
    # and before anything is read: a data set whose files are not even readable
    write_npz(tmp_path)
    monkeypatch.setattr(imagenet, "available_memory", lambda: 10_000)
    monkeypatch.setattr(imagenet, "_read_npz", lambda *args: pytest.fail("read"))
    with pytest.raises(DataError, match="15 images of 3x32x32"):
        DownsampledImageNet(str(tmp_path))


def test_a_folder_with_neither_release_names_both(tmp_path):
    with pytest.raises(DataError, match=r"train_64x64/ and valid_64x64/.*val_data\.npz"):
        DownsampledImageNet(str(tmp_path), size=64)
    write_folders(tmp_path)
    with pytest.raises(DataError, match="in data.format=npz"):
        DownsampledImageNet(str(tmp_path), format="npz")


def test_imagenet64_trains_and_records_its_release(tmp_path):
    write_npz(tmp_path / "imagenet64", size=64, batches=(6,), n_valid=3)
    run_cli("data=imagenet64", f"data.root={tmp_path / 'imagenet64'}", "data.n_val=2",
            "model.n_filters=4", "model.n_blocks=1", "train.steps=2", "train.batch_size=2",
            "train.eval_every=2", "train.sample_every=2", "train.checkpoint_every=2",
            "train.n_samples=2", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["data_version"].startswith("Chrabaszcz") and metrics["steps"] == 2
    assert np.isfinite(metrics["test_bpd"])

