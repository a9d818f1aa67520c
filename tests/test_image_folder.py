"""data=image_folder on a few dozen tiny pictures the test writes: flat and class folders,
PNG and JPEG, resize and crop, both ways of choosing the test split, unreadable files
named, and a CLI run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_cli
from PIL import Image

from flowtrain.data.image_folder import ImageFolderData
from flowtrain.errors import DataError


def write_pictures(folder, n: int, size=(12, 9), classes=("cats", "dogs"), seed=0) -> None:
    """``n`` pictures of width x height ``size``, spread over class sub-folders, half PNG
    and half JPEG."""
    rng = np.random.default_rng(seed)
    for index in range(n):
        where = folder / classes[index % len(classes)] if classes else folder
        where.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        suffix = "png" if index % 2 else "jpg"
        Image.fromarray(pixels).save(where / f"{index:03d}.{suffix}")


def test_pictures_are_resized_cropped_and_split_deterministically(tmp_path):
    write_pictures(tmp_path / "pics", 30)
    data = ImageFolderData(str(tmp_path / "pics"), size=6, n_test=5, n_val=4)
    assert data.train.shape == (21, 3, 6, 6) and data.train.dtype == torch.uint8
    assert data.val.shape == (4, 3, 6, 6) and data.test.shape == (5, 3, 6, 6)
    assert data.levels == 256 and data.name == "pics"
    again = ImageFolderData(str(tmp_path / "pics"), size=6, n_test=5, n_val=4)
    assert torch.equal(data.test, again.test) and torch.equal(data.train, again.train)
    # the short side (9) goes to 6, then the centre 6 x 6 of 8 x 6: as torchvision does
    from torchvision.transforms import functional
    first = sorted((tmp_path / "pics").rglob("*.*"))[0]
    expected = functional.pil_to_tensor(functional.center_crop(
        functional.resize(Image.open(first).convert("RGB"), 6), 6))
    everything = torch.cat([data.train, data.val, data.test])
    assert any(torch.equal(expected, image) for image in everything)


def test_a_test_folder_and_grayscale(tmp_path):
    write_pictures(tmp_path / "train", 12, classes=())
    write_pictures(tmp_path / "test", 3, classes=(), seed=1)
    data = ImageFolderData(str(tmp_path / "train"), size=4, channels=1,
                           test_root=str(tmp_path / "test"))
    assert data.test.shape == (3, 1, 4, 4)
    assert len(data.train) + len(data.val) == 12 and len(data.val) == 1  # 10%


def test_a_test_folder_inside_the_training_folder_is_refused(tmp_path):
    write_pictures(tmp_path / "pics", 4)
    with pytest.raises(DataError, match="lies inside data.root"):
        ImageFolderData(str(tmp_path / "pics"), test_root=str(tmp_path / "pics" / "cats"))


def test_unreadable_files_are_named_and_left_out(tmp_path, caplog):
    write_pictures(tmp_path / "pics", 10)
    (tmp_path / "pics" / "cats" / "broken.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        data = ImageFolderData(str(tmp_path / "pics"), size=4, n_test=2, n_val=1)
    assert len(data.train) + len(data.val) + len(data.test) == 10
    assert "broken.png" in caplog.text and "1 of 11 files could not be read" in caplog.text


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "no such folder. Point data.root"),
    (lambda root: root.mkdir(), "no pictures found"),
])
def test_a_missing_or_empty_folder_names_it(tmp_path, make, message):
    make(tmp_path / "pics")
    with pytest.raises(DataError, match=message):
        ImageFolderData(str(tmp_path / "pics"))


def test_a_folder_of_pictures_trains_end_to_end(tmp_path):
    write_pictures(tmp_path / "pics", 24, size=(10, 10))
    run_cli("data=image_folder", f"data.root={tmp_path / 'pics'}", "data.size=8",
            "data.n_test=4", "model.n_filters=4", "model.n_blocks=1", "train.steps=2",
            "train.batch_size=8", "train.eval_every=2", "train.sample_every=2",
            "train.checkpoint_every=2", "train.n_samples=4", "device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["steps"] == 2 and np.isfinite(metrics["test_bpd"])
