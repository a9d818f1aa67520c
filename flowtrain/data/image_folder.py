"""``data=image_folder``: your own pictures, PNG or JPEG files in a folder (flat, or in class
sub-folders as torchvision's ``ImageFolder`` reads them), decoded once into uint8 tensors.

Each image is resized so its short side is ``size`` and centre-cropped to ``size`` x
``size`` (torchvision's Resize then CenterCrop), in grayscale (``channels=1``) or RGB (3).
The test split is a separate folder (``test_root``) or the last ``n_test`` of a seeded
permutation; ``n_val`` of the training images are the validation split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowtrain.data.base import (
    FlowData,
    carve_validation,
    default_n_val,
    keep_in_place,
    split_shuffled,
)
from flowtrain.errors import DataError

log = logging.getLogger(__name__)

# What torchvision's ImageFolder reads as pictures (torchvision.datasets.folder
# IMG_EXTENSIONS), lower-cased.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MODES = {1: "L", 3: "RGB"}


def image_files(root: Path) -> list[Path]:
    """Every picture under ``root``, in its sub-folders too, in a fixed (sorted) order."""
    return sorted(path for path in root.rglob("*")
                  if path.is_file() and path.suffix.lower() in EXTENSIONS)


def decode(path: Path, size: int, channels: int) -> Tensor:
    """One file as a uint8 [channels, size, size] tensor: short side resized to ``size``,
    then the centre crop."""
    from PIL import Image, ImageOps
    from torchvision.transforms import functional

    with Image.open(path) as image:
        # upright as a viewer shows it: phone photos store their rotation in EXIF
        image = ImageOps.exif_transpose(image).convert(_MODES[channels])
        image = functional.center_crop(functional.resize(image, size), size)
        return functional.pil_to_tensor(image)


def read_pictures(files: list[Path], size: int, channels: int, description: str) -> Tensor:
    """``files`` decoded into one preallocated uint8 [N, channels, size, size] tensor, with
    a progress bar: no second copy of the images is held. Files that cannot be decoded
    are named in a warning and left out."""
    from PIL import Image

    images = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    readable = torch.ones(len(files), dtype=torch.bool)
    unreadable = []
    for index, path in enumerate(tqdm(files, desc=description, unit="image", leave=False,
                                      disable=None)):
        try:
            images[index] = decode(path, size, channels)
        # PIL's UnidentifiedImageError is an OSError; a decompression bomb is neither
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            readable[index] = False
            unreadable.append(f"{path} ({error.__class__.__name__})")
    if not unreadable:
        return images
    listed = "; ".join(unreadable[:5]) + (f"; and {len(unreadable) - 5} more"
                                          if len(unreadable) > 5 else "")
    log.warning("%d of %d files could not be read and are left out: %s",
                len(unreadable), len(files), listed)
    if len(unreadable) == len(files):
        raise DataError(f"none of the {len(files)} picture files could be read: "
                        f"{unreadable[0]}")
    return keep_in_place(images, readable.nonzero().squeeze(1))


def read_folder(root: Path, size: int, channels: int, flag: str) -> Tensor:
    """All pictures under ``root`` as [N, channels, size, size] uint8 (``read_pictures``);
    a missing or empty folder is named with the ``flag`` that set it."""
    if not root.is_dir():
        raise DataError(f"{flag}={root}: no such folder. Point {flag} at a folder of PNG or "
                        f"JPEG files (flat, or in class sub-folders).")
    files = image_files(root)
    if not files:
        raise DataError(f"{flag}={root}: no pictures found (looked for "
                        f"{', '.join(EXTENSIONS)} files, in sub-folders too)")
    return read_pictures(files, size, channels, f"reading {root.name}")


class ImageFolderData(FlowData):
    """``data=image_folder``: 256-level images of ``channels`` x ``size`` x ``size``."""

    def __init__(self, root: str, size: int = 32, channels: int = 3, n_test: int = 100,
                 test_root: str | None = None, n_val: int | None = None, seed: int = 0,
                 hflip: bool = False):
        if size < 2:
            raise DataError(f"data.size must be at least 2; got {size}")
        if channels not in _MODES:
            raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB); got {channels}")
        name = Path(root).name or "image_folder"
        images = read_folder(Path(root).expanduser(), size, channels, "data.root")
        if test_root is not None:
            inside = Path(test_root).expanduser().resolve()
            if inside.is_relative_to(Path(root).expanduser().resolve()):
                raise DataError(f"data.test_root={test_root} lies inside data.root={root}, so "
                                f"its pictures would be trained on too; move it out of "
                                f"data.root")
            test = read_folder(Path(test_root).expanduser(), size, channels, "data.test_root")
            n_val = default_n_val(len(images)) if n_val is None else n_val
            train, val = carve_validation(images, n_val, name)
        else:
            n_val = default_n_val(len(images) - n_test) if n_val is None else n_val
            train, val, test = split_shuffled(images, n_test, n_val, seed, name)
        log.info("%s: %d training, %d validation, %d test images of %dx%dx%d", root,
                 len(train), 0 if val is None else len(val), len(test), channels, size, size)
        super().__init__(train, test, name=name, levels=256, val=val, hflip=hflip)
