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
The npz batches carry each image's class (``labels``, 1 .. 1000), kept as 0 .. 999; the PNG
folders carry none, so that release is unlabelled.
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

from flowtrain.data.base import FlowData, Labels, carve_validation_in_place
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
# Rows moved at a time when the validation split is carved out in place.
CARVE_CHUNK = 65_536
# The npz release numbers ImageNet's classes 1 .. 1000, in the order of its map_clsloc.txt.
N_CLASSES = 1000
CLASSES = tuple(str(label) for label in range(N_CLASSES))


def _folders(root: Path, size: int) -> tuple[Path, Path]:
    return root / f"train_{size}x{size}", root / f"valid_{size}x{size}"


def _npz_files(root: Path) -> tuple[list[Path], Path | None]:
    """The training batches in their numeric order and val_data.npz, anywhere under
    ``root``: the release's train and validation zips unpack into folders of their own."""
    batches = sorted((path for path in root.rglob("train_data_batch_*.npz")
                      if _TRAIN_BATCH.fullmatch(path.name)),
                     key=lambda path: int(_TRAIN_BATCH.fullmatch(path.name).group(1)))
    return batches, next(iter(sorted(root.rglob("val_data.npz"))), None)


def detect_format(root: Path, size: int, given: ImageNetFormat) -> ImageNetFormat:
    """The release under ``root``: as given, or found from its files; an error that names
    both layouts when neither is there."""
    train, valid = _folders(root, size)
    batches, val = _npz_files(root)
    found = {ImageNetFormat.folders: train.is_dir() and valid.is_dir(),
             ImageNetFormat.npz: bool(batches) and val is not None}
    if given is not ImageNetFormat.auto and found[given]:
        return given
    if given is ImageNetFormat.auto and any(found.values()):
        return ImageNetFormat.folders if found[ImageNetFormat.folders] else ImageNetFormat.npz
    raise DataError(f"data.root={root} holds no downsampled ImageNet {size}x{size}"
                    f"{'' if given is ImageNetFormat.auto else f' in data.format={given.value}'}"
                    f": expected the folders {train.name}/ and {valid.name}/ (van den Oord et "
                    f"al. 2016) or train_data_batch_1.npz ... and val_data.npz, in it or its "
                    f"sub-folders (Chrabaszcz et al. 2017). Both need an ImageNet account: "
                    f"download one, unpack it there, and point data.root at it.")


def _npz_rows(path: Path) -> int:
    """How many images an .npz batch holds, from its array header, without loading it."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("data.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, _ = read_header(member)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise DataError(f"{path} is not a readable npz batch with a `data` array ({error}); "
                        f"download and unpack it again") from error
    return shape[0]


def _cgroup_headroom() -> int | None:
    """What a container's or a SLURM job's memory limit still allows (cgroup v2), or None
    where there is no limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available now: Linux's MemAvailable, or less under a cgroup limit;
    None where unknown."""
    found = []
    try:
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo
                      if line.startswith("MemAvailable:")]
    except OSError:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append(headroom)
    return min(found) if found else None


def check_fits_in_memory(n_images: int, size: int, working: int, what: str) -> None:
    """Say what the images will take, and refuse, before anything is read, when that and
    ``working`` bytes more (what reading needs at its peak) are more than is available."""
    needed = n_images * 3 * size * size
    available = available_memory()
    log.info("%s: %s images of 3x%dx%d, %.1f GB as uint8 in memory (%s available)", what,
             f"{n_images:,}", size, size, needed / 1e9,
             "unknown" if available is None else f"{available / 1e9:.1f} GB")
    if available is not None and needed + working > available:
        raise DataError(f"{what}: {n_images:,} images of 3x{size}x{size} take "
                        f"{needed / 1e9:.1f} GB as uint8 (and {working / 1e9:.1f} GB more "
                        f"while reading), and only {available / 1e9:.1f} GB of memory is "
                        f"available. Free memory or use a machine with more.")


def _npz_labels(path: Path, batch: np.lib.npyio.NpzFile, count: int) -> Tensor | str:
    """A batch's ``labels``, 1 .. 1000, as int64 class indices 0 .. 999; or why it has
    none usable (repackaged files): the images still train an unconditional model."""
    if "labels" not in batch.files:
        return f"{path} has no `labels` array (found: {', '.join(batch.files)})"
    labels = batch["labels"]
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (count,):
        return (f"{path}: `labels` has shape {labels.shape} and dtype {labels.dtype}; "
                f"expected ({count},) integers, one per image")
    if count and not 1 <= labels.min() <= labels.max() <= N_CLASSES:
        return (f"{path}: `labels` runs {labels.min()} .. {labels.max()}; expected the "
                f"release's classes 1 .. {N_CLASSES}")
    return torch.from_numpy(labels.astype(np.int64) - 1)


def _read_npz(files: list[Path], size: int, counts: list[int]) -> tuple[Tensor, Tensor | str]:
    """(the batches' rows in one preallocated [N, 3, size, size] uint8 tensor, their int64
    labels [N], or why they have none: the first batch without usable labels)."""
    images = torch.empty((sum(counts), 3, size, size), dtype=torch.uint8)
    labels: Tensor | str = torch.empty(sum(counts), dtype=torch.int64)
    start = 0
    for path, count in zip(tqdm(files, desc="reading npz batches", unit="file", leave=False,
                                disable=None), counts, strict=True):
        with np.load(path, allow_pickle=False) as batch:
            if isinstance(labels, Tensor):
                batch_labels = _npz_labels(path, batch, count)
                if isinstance(batch_labels, str):
                    labels = batch_labels
                else:
                    labels[start:start + count] = batch_labels
            rows = batch["data"]
            if rows.dtype != np.uint8 or rows.shape != (count, 3 * size * size):
                raise DataError(f"{path}: `data` has shape {rows.shape} and dtype "
                                f"{rows.dtype}; expected ({count}, {3 * size * size}) uint8 "
                                f"rows for {size}x{size} images")
            images[start:start + count] = torch.from_numpy(rows).reshape(count, 3, size, size)
        start += count
    return images, labels


class DownsampledImageNet(FlowData):
    """``data=imagenet32`` / ``imagenet64``: 3 x ``size`` x ``size``, 256 levels; the
    release's validation images are the test split, ``n_val`` training images the
    validation split. Labelled (1000 classes) from the npz release only."""

    def __init__(self, root: str, size: int = 32,
                 format: ImageNetFormat | str = ImageNetFormat.auto,  # noqa: A002
                 n_val: int = 10_000, hflip: bool = False, shift: float = 0.0):
        if size not in (32, 64):
            raise DataError(f"data.size must be 32 or 64; got {size}")
        folder = Path(root).expanduser()
        release = detect_format(folder, size, ImageNetFormat(format))
        name = f"imagenet{size}"
        image_bytes = 3 * size * size
        if release is ImageNetFormat.folders:
            files = {split: image_files(where)
                     for split, where in zip(("train", "test"), _folders(folder, size),
                                             strict=True)}
            counts = {split: len(found) for split, found in files.items()}
            working = CARVE_CHUNK * image_bytes
        else:
            batches, val = _npz_files(folder)
            files = {"train": batches, "test": [val]}
            rows = {split: [_npz_rows(path) for path in found] for split, found in files.items()}
            counts = {split: sum(found) for split, found in rows.items()}
            # one batch decompressed at a time, or the carve's chunk
            working = max([*rows["train"], CARVE_CHUNK]) * image_bytes
        check_fits_in_memory(counts["train"] + counts["test"], size, working,
                             f"{name} ({folder})")
        if release is ImageNetFormat.folders:
            splits = {split: read_pictures(found, size, 3, f"reading {name} {split}")[0]
                      for split, found in files.items()}
            labels, unlabelled_because = None, ("the PNG-folder release has no class labels "
                                                 "(the npz release has)")
        else:
            (train_images, train_labels), (test_images, test_labels) = (
                _read_npz(files[split], size, rows[split]) for split in ("train", "test"))
            splits = {"train": train_images, "test": test_images}
            unlabelled_because = next((why for why in (train_labels, test_labels)
                                       if isinstance(why, str)), None)
            if unlabelled_because is not None:
                log.warning("%s, so the data is used without class labels",
                            unlabelled_because)
            labels = (None if unlabelled_because is not None
                      else Labels.carved(train_labels, test_labels, CLASSES, n_val, name))
        train, val_split = carve_validation_in_place(splits["train"], n_val, name,
                                                     chunk=CARVE_CHUNK)
        super().__init__(train, splits["test"], name=name, levels=256, val=val_split,
                         hflip=hflip, shift=shift, labels=labels)
        self.unlabelled_because = unlabelled_because
        self.version = VERSIONS[release]
        log.info("%s: the %s release, %d train, %d validation, %d test images", name,
                 self.version, len(train), n_val, len(splits["test"]))
