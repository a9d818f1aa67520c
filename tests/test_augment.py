"""data.shift: random translations of training images as Glow's released code makes them
(Keras' bilinear shift with the edges extended, floored to integers), checked against
scipy.ndimage, which Keras called; drawn with the epoch's order, so a resumed run replays
them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from flowtrain.errors import CheckpointError, ConfigError
from flowtrain.training.augment import random_offsets, translated
from flowtrain.training.batches import BatchStream


def _keras_glow_shift(image: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """One image [C, H, W] as keras_preprocessing (2018) image.py moves it: the shift
    matrix [[1, 0, tx], [0, 1, ty]] (tx along rows) centred by
    ``transform_matrix_offset_center``, then scipy's affine_transform per channel of the
    float32 image at order 1, mode 'nearest'; then Glow's x_to_uint8 (floor, clip)."""
    height, width = image.shape[1:]
    shift = np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1]])
    centre = np.array([[1, 0, height / 2 + 0.5], [0, 1, width / 2 + 0.5], [0, 0, 1]])
    uncentre = np.array([[1, 0, -(height / 2 + 0.5)], [0, 1, -(width / 2 + 0.5)], [0, 0, 1]])
    transform = centre @ shift @ uncentre
    channels = [ndimage.affine_transform(channel.astype(np.float32), transform[:2, :2],
                                         transform[:2, 2], order=1, mode="nearest")
                for channel in image]
    return np.clip(np.floor(np.stack(channels)), 0, 255).astype(np.uint8)


def test_translations_equal_the_released_augmentation_value_for_value():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 9, 7), generator=generator, dtype=torch.uint8)
    offsets = random_offsets(64, 9, 7, 0.4, generator)
    offsets[:4] = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-20.0, 0.5], [8.75, 6.0]],
                               dtype=torch.float64)  # none, whole pixels, past the border
    ours = translated(images, offsets)
    assert ours.dtype == torch.uint8
    for image, offset, moved in zip(images, offsets, ours, strict=True):
        assert np.array_equal(moved.numpy(), _keras_glow_shift(image.numpy(), offset.numpy()))
    assert torch.equal(ours[0], images[0])
    # by whole pixels: the rows below move up, the last row repeats (edges extended)
    assert torch.equal(ours[1][:, :7, 1:], images[1][:, 2:, :6])
    assert torch.equal(ours[1][:, 7:, 1:], images[1][:, 8:, :6].expand(-1, 2, -1))


def test_offsets_are_uniform_within_the_fraction_of_each_side():
    offsets = random_offsets(20_000, 32, 16, 0.1, torch.Generator().manual_seed(0))
    rows, columns = offsets.unbind(1)
    assert rows.abs().max() <= 3.2 and columns.abs().max() <= 1.6
    assert rows.abs().max() > 3.19 and columns.abs().max() > 1.59
    assert abs(rows.mean()) < 0.05 and rows.std() == pytest.approx(6.4 / 12**0.5, rel=0.02)


def test_shifted_batches_keep_the_order_and_replay_on_resume():
    images = torch.randint(0, 256, (64, 1, 6, 6), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    stream = BatchStream(images, batch_size=16, seed=0, shift=0.25)
    plain = BatchStream(images, batch_size=16, seed=0)
    moved = 0
    for _ in range(4):  # one epoch: the plain stream's order, each image translated
        index = stream._order[stream._position:stream._position + 16]
        batch, unshifted = stream.next(), plain.next()
        assert torch.equal(batch, translated(unshifted, stream._offsets[index]))
        moved += int((batch != unshifted).flatten(1).any(dim=1).sum())
    assert moved > 48
    saved = stream.state_dict()
    expected = [stream.next() for _ in range(6)]
    resumed = BatchStream(images, batch_size=16, seed=5, shift=0.25)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, resumed.next()) for a in expected)
    # with mirrors too: translated first, then mirrored, as Keras does
    both = BatchStream(images, batch_size=16, seed=0, shift=0.25, hflip=True)
    index = both._order[:16]
    shifted = translated(images[index], both._offsets[index])
    mirrored = both._mirrored[index].view(-1, 1, 1, 1)
    assert torch.equal(both.next(), torch.where(mirrored, shifted.flip(-1), shifted))


@pytest.mark.parametrize("shift, data, message", [
    (1.0, torch.zeros(8, 1, 4, 4), r"in \[0, 1\)"), (-0.1, torch.zeros(8, 1, 4, 4), "in"),
    (0.1, torch.zeros(8, 2), "translates images")])
def test_a_shift_it_cannot_make_is_refused(shift, data, message):
    with pytest.raises(ConfigError, match=f"data.shift.*{message}"):
        BatchStream(data, batch_size=4, seed=0, shift=shift)


def test_a_run_from_before_data_shift_resumes_without_it():
    from flowtrain.checkpoint_config import check_same_setup

    cifar = {"_target_": "flowtrain.data.images.TorchvisionImages", "name": "cifar10",
             "n_val": 5000}
    saved = {"model": {}, "data": cifar, "dequant": {}}
    check_same_setup(saved, {**saved, "data": {**cifar, "shift": 0.0}}, Path("last.pt"))
    with pytest.raises(CheckpointError, match=r"data.shift: saved 0.0, now 0.1.*predates "
                                              r"data.shift: add data.shift=0.0 to resume"):
        check_same_setup(saved, {**saved, "data": {**cifar, "shift": 0.1}}, Path("last.pt"))
