"""Image data sets, held in memory as integer tensors [N, C, H, W] with ``levels`` values.

mnist, fashion_mnist and cifar10 come through torchvision's own data set classes; digits is
scikit-learn's bundled 8x8 handwritten digits, so a run works with no network at all.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowtrain.data.base import FlowData, Labels, carve_validation, split_shuffled
from flowtrain.errors import DataError


class TorchvisionName(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"


def _torchvision_class(name: TorchvisionName) -> type:
    from torchvision import datasets

    return {TorchvisionName.mnist: datasets.MNIST,
            TorchvisionName.fashion_mnist: datasets.FashionMNIST,
            TorchvisionName.cifar10: datasets.CIFAR10}[name]


# Where under data.root each torchvision class looks for its files.
_FILES_FOLDER = {TorchvisionName.mnist: "MNIST/raw",
                 TorchvisionName.fashion_mnist: "FashionMNIST/raw",
                 TorchvisionName.cifar10: "cifar-10-batches-py"}


def as_images(values: np.ndarray | Tensor, channels_last: bool = False) -> Tensor:
    """[N, H, W], [N, C, H, W] or, with ``channels_last``, [N, H, W, C] -> [N, C, H, W]."""
    images = torch.as_tensor(np.asarray(values))
    if images.ndim == 3:
        return images.unsqueeze(1)
    return images.permute(0, 3, 1, 2).contiguous() if channels_last else images


def looks_channels_last(shape: tuple[int, ...]) -> bool:
    """[N, H, W, C] with C of 1, 3 or 4 and H, W larger: how most image arrays are saved."""
    return len(shape) == 4 and shape[3] in (1, 3, 4) and min(shape[1:3]) > 4


def fewer_bits(images: Tensor, bits: int) -> Tensor:
    """8-bit images kept at their ``bits`` most significant bits, values 0 .. 2**bits - 1
    (Glow's --n_bits_x: floor(x / 2**(8 - bits)))."""
    if not 1 <= bits <= 8:
        raise DataError(f"data.bits must be between 1 and 8; got {bits}")
    return images // 2 ** (8 - bits)


class TorchvisionImages(FlowData):
    """``data=mnist|fashion_mnist|cifar10``: both splits through torchvision, with their
    class labels; the validation split is ``n_val`` of the training images. ``bits`` < 8
    keeps that many bits of each value, and bits/dim are then counted over 2**bits
    levels."""

    def __init__(self, name: TorchvisionName | str, root: str = "data",
                 download: bool = False, n_val: int = 5000, hflip: bool = False,
                 bits: int = 8, shift: float = 0.0):
        name = TorchvisionName(name)
        folder = Path(root).expanduser()
        dataset_class = _torchvision_class(name)
        splits, targets = {}, {}
        for split, train in (("train", True), ("test", False)):
            try:
                dataset = dataset_class(str(folder), train=train, download=download)
            except (RuntimeError, OSError, ValueError, EOFError) as error:
                files = folder.resolve() / _FILES_FOLDER[name]
                hint = ("downloading is off: add data.download=true to fetch them, or put "
                        "them there and point data.root at the folder above" if not download
                        else "downloading them failed (no network?); put them there yourself "
                        "and set data.download=false")
                raise DataError(f"{name.value}: no usable {split} files in {files} "
                                f"(data.root={root}); {hint}.") from error
            # CIFAR-10 keeps HWC numpy arrays; MNIST-style sets keep [N, H, W] tensors.
            splits[split] = fewer_bits(as_images(dataset.data, channels_last=name is
                                                 TorchvisionName.cifar10), bits)
            # a tensor for MNIST-style sets, a list for CIFAR-10
            targets[split] = torch.as_tensor(dataset.targets, dtype=torch.int64)
        train, val = carve_validation(splits["train"], n_val, name.value)
        labels = Labels.carved(targets["train"], targets["test"], dataset.classes, n_val,
                               name.value)
        super().__init__(train, splits["test"], name=name.value, levels=2**bits, val=val,
                         hflip=hflip, shift=shift, labels=labels)


class Digits(FlowData):
    """``data=digits``: scikit-learn's 1797 8x8 digits, 17 gray levels, labelled "0" ..
    "9", a fixed split (the last ``n_test`` of a seeded permutation are the test set;
    ``n_val`` of the rest the validation set)."""

    def __init__(self, n_test: int = 297, seed: int = 0, n_val: int = 150,
                 hflip: bool = False, shift: float = 0.0):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.uint8).unsqueeze(1)
        train, val, test = split_shuffled(images, n_test, n_val, seed, "digits")
        labels = Labels.shuffled(torch.as_tensor(digits.target, dtype=torch.int64),
                                 [str(digit) for digit in digits.target_names], n_test, n_val,
                                 seed, "digits")
        super().__init__(train, test, name="digits", levels=17, val=val, hflip=hflip,
                         shift=shift, labels=labels)


class PhotoPatches(FlowData):
    """``data=photo_patches``: colour images offline. scikit-learn's two sample photos
    (china.jpg, flower.jpg, 427x640) cut into non-overlapping ``size`` x ``size`` patches
    (520 at 32x32), 256 levels; ``n_test`` and ``n_val`` of a seeded permutation are the
    test and validation splits. Patches do not overlap, so no test pixel is trained on."""

    def __init__(self, size: int = 32, n_test: int = 100, n_val: int = 50, seed: int = 0,
                 hflip: bool = False, shift: float = 0.0):
        from sklearn.datasets import load_sample_images

        if size < 2:
            raise DataError(f"data.size must be at least 2; got {size}")
        patches = torch.cat([whole_patches(torch.from_numpy(photo.copy()), size)
                             for photo in load_sample_images().images])
        train, val, test = split_shuffled(patches, n_test, n_val, seed, "photo_patches")
        super().__init__(train, test, name="photo_patches", levels=256, val=val, hflip=hflip,
                         shift=shift)


def whole_patches(photo: Tensor, size: int) -> Tensor:
    """[H, W, C] -> [N, C, size, size]: the whole non-overlapping patches, row by row."""
    rows, columns = photo.shape[0] // size, photo.shape[1] // size
    grid = photo[:rows * size, :columns * size].permute(2, 0, 1)
    grid = grid.reshape(photo.shape[2], rows, size, columns, size)
    return grid.permute(1, 3, 0, 2, 4).reshape(rows * columns, photo.shape[2], size, size)
