"""``data=imagenet32`` and ``data=imagenet64``: downsampled ImageNet, from files you have
(both releases need an account, so nothing is downloaded).

Two releases circulate, and their bits/dim do not compare:
- **van den Oord et al. (2016)**, "Pixel Recurrent Neural Networks": folders of PNGs,
  ``train_32x32/`` and ``valid_32x32/`` (or ``_64x64``); Glow and Flow++ report on it.
- **Chrabaszcz et al. (2017)**, "A Downsampled Variant of ImageNet": .npz batches
  ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz``, whose
  ``data`` rows are an image's red plane, then green, then blue (their
  image2numpy_imagenet_train.py), another resizing of the same photos.

``data.root`` holds one of them (``data.format=auto`` tells which); the validation files
are the test split, and which release a number is on goes to the log and metrics.json.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowtrain.data.base import FlowData, carve_validation_in_place
from flowtrain.data.image_folder import image_files, read_pictures
from flowtrain.errors import DataError

log = logging.getLogger(__name__)


class ImageNetFormat(str, Enum):
    auto = "auto"
    folders = "folders"  # van den Oord et al. 2016: PNG folders
    npz = "npz"  # Chrabaszcz et al. 2017: .npz batches


VERSIONS = {ImageNetFormat.folders: "van den Oord et al. 2016 (PNG folders)",
            ImageNetFormat.npz: "Chrabaszcz et al. 2017 (npz batches)"}
_TRAIN_BATCH = re.compile(r"train_data_batch_(\d+)\.npz")


def _folders(root: Path, size: int) -> tuple[Path, Path]:
    return root / f"train_{size}x{size}", root / f"valid_{size}x{size}"


def _npz_files(root: Path) -> tuple[list[Path], Path]:
    batches = sorted((path for path in root.glob("train_data_batch_*.npz")
                      if _TRAIN_BATCH.fullmatch(path.name)),
                     key=lambda path: int(_TRAIN_BATCH.fullmatch(path.name).group(1)))
    return batches, root / "val_data.npz"


def detect_format(root: Path, size: int, given: ImageNetFormat) -> ImageNetFormat:
    """The release under ``root``: as given, or found from its files; an error that names
    both layouts when neither is there."""
    train, valid = _folders(root, size)
    batches, val = _npz_files(root)
    found = {ImageNetFormat.folders: train.is_dir() and valid.is_dir(),
             ImageNetFormat.npz: bool(batches) and val.is_file()}
    if given is not ImageNetFormat.auto and found[given]:
        return given
    if given is ImageNetFormat.auto and any(found.values()):
        return ImageNetFormat.folders if found[ImageNetFormat.folders] else ImageNetFormat.npz
    raise DataError(f"data.root={root} holds no downsampled ImageNet {size}x{size}"
                    f"{'' if given is ImageNetFormat.auto else f' in data.format={given.value}'}"
                    f": expected the folders {train.name}/ and {valid.name}/ (van den Oord et "
                    f"al. 2016) or train_data_batch_1.npz ... and val_data.npz (Chrabaszcz et "
                    f"al. 2017). Both need an ImageNet account: download one, unpack it there, "
                    f"and point data.root at it.")


def _npz_rows(path: Path) -> int:
    """How many images an .npz batch holds, from its array header, without loading it."""
    with zipfile.ZipFile(path) as archive, archive.open("data.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, _ = read_header(member)
    return shape[0]


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(n_images: int, size: int, what: str) -> None:
    """Say what the images will take, and refuse when that is more than is available."""
    needed = n_images * 3 * size * size
    available = available_memory()
    log.info("%s: %d images of 3x%dx%d, %.1f GB as uint8 in memory (%s available)", what,
             n_images, size, size, needed / 1e9,
             "unknown" if available is None else f"{available / 1e9:.1f} GB")
    if available is not None and needed > available:
        raise DataError(f"{what}: {n_images:,} images of 3x{size}x{size} take "
                        f"{needed / 1e9:.1f} GB as uint8, and only {available / 1e9:.1f} GB "
                        f"of memory is available. Free memory or use a machine with more.")


def _read_npz(files: list[Path], size: int, counts: list[int]) -> Tensor:
    """The batches' rows into one preallocated [N, 3, size, size] uint8 tensor."""
    images = torch.empty((sum(counts), 3, size, size), dtype=torch.uint8)
    start = 0
    for path, count in zip(tqdm(files, desc="reading npz batches", unit="file", leave=False),
                           counts, strict=True):
        with np.load(path, allow_pickle=False) as batch:
            rows = batch["data"]
            if rows.dtype != np.uint8 or rows.shape != (count, 3 * size * size):
                raise DataError(f"{path}: `data` has shape {rows.shape} and dtype "
                                f"{rows.dtype}; expected ({count}, {3 * size * size}) uint8 "
                                f"rows for {size}x{size} images")
            images[start:start + count] = torch.from_numpy(rows).view(count, 3, size, size)
        start += count
    return images


class DownsampledImageNet(FlowData):
    """``data=imagenet32`` / ``imagenet64``: 3 x ``size`` x ``size``, 256 levels; the
    release's validation images are the test split, ``n_val`` training images the
    validation split."""

    def __init__(self, root: str, size: int = 32,
                 format: ImageNetFormat | str = ImageNetFormat.auto,  # noqa: A002
                 n_val: int = 10_000, hflip: bool = False):
        if size not in (32, 64):
            raise DataError(f"data.size must be 32 or 64; got {size}")
        folder = Path(root).expanduser()
        release = detect_format(folder, size, ImageNetFormat(format))
        name = f"imagenet{size}"
        if release is ImageNetFormat.folders:
            train_dir, valid_dir = _folders(folder, size)
            splits = {}
            for split, where in (("train", train_dir), ("test", valid_dir)):
                files = image_files(where)
                check_fits_in_memory(len(files), size, f"{name} {split} ({where})")
                splits[split] = read_pictures(files, size, 3, f"reading {where.name}")
        else:
            batches, val = _npz_files(folder)
            splits = {}
            for split, files in (("train", batches), ("test", [val])):
                counts = [_npz_rows(path) for path in files]
                check_fits_in_memory(sum(counts), size, f"{name} {split} ({folder})")
                splits[split] = _read_npz(files, size, counts)
        train, val_split = carve_validation_in_place(splits["train"], n_val, name)
        super().__init__(train, splits["test"], name=name, levels=256, val=val_split,
                         hflip=hflip)
        self.version = VERSIONS[release]
        log.info("%s: the %s release, %d train, %d validation, %d test images", name,
                 self.version, len(train), n_val, len(splits["test"]))
