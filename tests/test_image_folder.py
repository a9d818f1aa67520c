"""data=image_folder on a few dozen tiny pictures the test writes: flat and class folders,
PNG and JPEG, resize and crop, both ways of choosing the test split, class labels kept
with their pictures, unreadable files named, and a CLI run."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_cli
from PIL import Image

from flowtrain.data.image_folder import ImageFolderData
from flowtrain.errors import DataError


def write_pictures(folder, n: int, size=(12, 9), classes=("cats", "dogs"), seed=0,
                   grays: dict[str, int] | None = None) -> None:
    """``n`` pictures of width x height ``size``, spread over class sub-folders, half PNG
    and half JPEG; random, or with ``grays`` flat in the gray of their sub-folder."""
    rng = np.random.default_rng(seed)
    for index in range(n):
        where = folder / classes[index % len(classes)] if classes else folder
        where.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        if grays is not None:
            pixels[:] = grays[where.name]
        suffix = "png" if index % 2 else "jpg"
        Image.fromarray(pixels).save(where / f"{index:03d}.{suffix}")


GRAYS = {"cats": 20, "dogs": 120, "zebras": 220}


def assert_labels_follow_gray(data) -> None:
    """Every split's labels are int64, one per image, and name the class whose gray it was
    written in (JPEG moves a flat gray by a level or two)."""
    class_grays = torch.tensor([GRAYS[name] for name in data.labels.classes],
                               dtype=torch.float)
    for split in ("train", "val", "test"):
        images, labels = data.split(split), data.split_labels(split)
        assert labels.dtype == torch.int64 and labels.shape == (len(images),), split
        grays = class_grays[labels]
        assert (images.float().mean(dim=(1, 2, 3)) - grays).abs().max() < 4, split


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
    assert data.labels is None and data.n_classes == 0  # a flat folder: no classes


def test_a_test_folder_inside_the_training_folder_is_refused(tmp_path):
    write_pictures(tmp_path / "pics", 4)
    with pytest.raises(DataError, match="lies inside data.root"):
        ImageFolderData(str(tmp_path / "pics"), test_root=str(tmp_path / "pics" / "cats"))


def test_unreadable_files_are_named_and_left_out_with_their_labels(tmp_path, caplog):
    """broken.png sorts after the readable cats and before every dog: a label list that
    kept its row would pair each dog with the wrong class."""
    write_pictures(tmp_path / "pics", 10, grays=GRAYS)
    (tmp_path / "pics" / "cats" / "broken.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        data = ImageFolderData(str(tmp_path / "pics"), size=4, n_test=2, n_val=1)
    assert len(data.train) + len(data.val) + len(data.test) == 10
    assert "broken.png" in caplog.text and "1 of 11 files could not be read" in caplog.text
    assert_labels_follow_gray(data)


def test_class_sub_folders_label_the_pictures_through_every_split(tmp_path):
    """torchvision ImageFolder's convention: the class is the folder one level below the
    root, deeper folders included, and the classes are sorted."""
    classes = ("zebras", "cats", "dogs")
    write_pictures(tmp_path / "pics", 24, classes=classes, grays=GRAYS)
    write_pictures(tmp_path / "pics" / "cats", 3, classes=("more",), seed=1,
                   grays={"more": GRAYS["cats"]})
    data = ImageFolderData(str(tmp_path / "pics"), size=6, n_test=5, n_val=4)
    assert data.labels.classes == ("cats", "dogs", "zebras") and data.n_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (18, 4, 5)
    assert_labels_follow_gray(data)
    everything = torch.cat([data.labels.train, data.labels.val, data.labels.test])
    assert everything.bincount().tolist() == [11, 8, 8]


@pytest.mark.parametrize("layout", ["loose file in the root", "one class"])
def test_pictures_not_in_two_or_more_class_folders_are_unlabelled(tmp_path, caplog, layout):
    write_pictures(tmp_path / "pics", 6, classes=("cats",) if layout == "one class"
                   else ("cats", "dogs"))
    if layout == "loose file in the root":
        write_pictures(tmp_path / "pics", 1, classes=(), seed=1)
    with caplog.at_level(logging.INFO):
        data = ImageFolderData(str(tmp_path / "pics"), size=4, n_test=2, n_val=1)
    assert data.labels is None and data.split_labels("train") is None
    assert "unlabelled" in caplog.text


def test_a_test_folder_is_labelled_with_the_training_classes(tmp_path):
    write_pictures(tmp_path / "train", 12, grays=GRAYS)
    write_pictures(tmp_path / "test", 3, classes=("dogs",), seed=1, grays=GRAYS)
    data = ImageFolderData(str(tmp_path / "train"), size=4, n_val=2,
                           test_root=str(tmp_path / "test"))
    assert data.labels.classes == ("cats", "dogs")
    assert data.labels.test.tolist() == [1, 1, 1]  # dogs, as in training
    assert_labels_follow_gray(data)


def test_a_test_class_the_training_pictures_lack_leaves_the_data_unlabelled(tmp_path,
                                                                              caplog):
    """Such data still trains an unconditional model; a conditional one is refused with
    the reason, which names the class."""
    write_pictures(tmp_path / "train", 4, classes=("cats", "dogs"))
    write_pictures(tmp_path / "test", 2, classes=("cats", "wolves"))
    with caplog.at_level(logging.WARNING):
        data = ImageFolderData(str(tmp_path / "train"), size=4,
                               test_root=str(tmp_path / "test"))
    assert data.labels is None
    assert re.search(r"classes the training pictures do not: wolves \(the training classes "
                     r"are cats, dogs\)", data.unlabelled_because)
    assert "without class labels" in caplog.text


def test_a_flat_test_folder_leaves_labelled_training_pictures_unlabelled(tmp_path, caplog):
    write_pictures(tmp_path / "train", 6, classes=("cats", "dogs"))
    write_pictures(tmp_path / "test", 2, classes=())
    with caplog.at_level(logging.WARNING):
        data = ImageFolderData(str(tmp_path / "train"), size=4,
                               test_root=str(tmp_path / "test"))
    assert data.labels is None
    assert "not in class sub-folders" in caplog.text and "without class labels" in caplog.text
    assert "not in class sub-folders" in data.unlabelled_because


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
