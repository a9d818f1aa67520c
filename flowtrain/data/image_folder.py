"""``data=image_folder``: your own pictures, PNG or JPEG files in a folder (flat, or in class
sub-folders as torchvision's ``ImageFolder`` reads them), decoded once into uint8 tensors.
Class sub-folders label the pictures: the class of a picture is the name of the folder one
level below the root that holds it, and label k is the k-th of those names, sorted.

Each image is resized so its short side is ``size`` and centre-cropped to ``size`` x
``size`` (torchvision's Resize then CenterCrop), in grayscale (``channels=1``) or RGB (3).
The test split is a separate folder (``test_root``) or the last ``n_test`` of a seeded
permutation; ``n_val`` of the training images are the validation split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowtrain.data.base import (
    FlowData,
    Labels,
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


def read_pictures(files: list[Path], size: int, channels: int, description: str
                  ) -> tuple[Tensor, Tensor]:
    """(``files`` decoded into one preallocated uint8 [N, channels, size, size] tensor,
    the indices into ``files`` of its rows), with a progress bar: no second copy of the
    images is held. Files that cannot be decoded are named in a warning and left out, so
    whatever else is kept per file (labels) keeps those rows."""
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
    kept = readable.nonzero().squeeze(1)
    if not unreadable:
        return images, kept
    listed = "; ".join(unreadable[:5]) + (f"; and {len(unreadable) - 5} more"
                                          if len(unreadable) > 5 else "")
    log.warning("%d of %d files could not be read and are left out: %s",
                len(unreadable), len(files), listed)
    if len(unreadable) == len(files):
        raise DataError(f"none of the {len(files)} picture files could be read: "
                        f"{unreadable[0]}")
    return keep_in_place(images, kept), kept


@dataclass(frozen=True)
class PictureFiles:
    """The pictures under ``root`` (``image_files``) and, where every one lies in a
    sub-folder, the name of the sub-folder one level below ``root`` that holds each: its
    class, as torchvision's ImageFolder reads it (deeper folders belong to that class).
    ``folders`` is None when some picture lies directly in ``root``."""

    root: Path
    files: list[Path]
    folders: list[str] | None

    @classmethod
    def find(cls, root: Path, flag: str) -> PictureFiles:
        """The pictures under ``root``; a missing or empty folder is named with the
        ``flag`` that set it."""
        if not root.is_dir():
            raise DataError(f"{flag}={root}: no such folder. Point {flag} at a folder of PNG "
                            f"or JPEG files (flat, or in class sub-folders).")
        files = image_files(root)
        if not files:
            raise DataError(f"{flag}={root}: no pictures found (looked for "
                            f"{', '.join(EXTENSIONS)} files, in sub-folders too)")
        parts = [path.relative_to(root).parts for path in files]
        loose = any(len(part) < 2 for part in parts)
        return cls(root, files, None if loose else [part[0] for part in parts])

    def read(self, size: int, channels: int, classes: tuple[str, ...] | None
             ) -> tuple[Tensor, Tensor | None]:
        """(the pictures that could be read, ``read_pictures``; their int64 labels, each
        one's folder's index in ``classes``, or None without ``classes``)."""
        images, kept = read_pictures(self.files, size, channels, f"reading {self.root.name}")
        if classes is None:
            return images, None
        index = {name: label for label, name in enumerate(classes)}
        return images, torch.tensor([index[name] for name in self.folders], dtype=torch.int64)[kept]


def training_classes(pictures: PictureFiles) -> tuple[tuple[str, ...] | None, str]:
    """(the sorted class names of the training pictures, ""), or (None, why they are
    unlabelled: loose files, or a single class)."""
    if pictures.folders is None:
        return None, (f"some pictures in {pictures.root} lie directly in it, not in class "
                      f"sub-folders")
    classes = tuple(sorted(set(pictures.folders)))
    if len(classes) < 2:
        return None, f"every picture in {pictures.root} is in one sub-folder ({classes[0]})"
    return classes, ""


def why_test_pictures_are_unlabelled(pictures: PictureFiles, classes: tuple[str, ...]) -> str:
    """Why the test pictures cannot be labelled with the training ``classes`` (they lie
    loose, or in a class the training pictures lack); "" when they can. Such data still
    trains an unconditional model."""
    if pictures.folders is None:
        return (f"some test pictures in {pictures.root} lie directly in it, not in class "
                f"sub-folders like the training pictures")
    unknown = sorted(set(pictures.folders) - set(classes))
    if unknown:
        return (f"data.test_root={pictures.root} has classes the training pictures do not: "
                f"{', '.join(unknown)} (the training classes are {', '.join(classes)})")
    return ""


class ImageFolderData(FlowData):
    """``data=image_folder``: 256-level images of ``channels`` x ``size`` x ``size``,
    labelled by their class sub-folders where every picture is in one (of at least two),
    else unlabelled."""

    def __init__(self, root: str, size: int = 32, channels: int = 3, n_test: int = 100,
                 test_root: str | None = None, n_val: int | None = None, seed: int = 0,
                 hflip: bool = False, shift: float = 0.0):
        if size < 2:
            raise DataError(f"data.size must be at least 2; got {size}")
        if channels not in _MODES:
            raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB); got {channels}")
        name = Path(root).name or "image_folder"
        if test_root is not None and Path(test_root).expanduser().resolve().is_relative_to(
                Path(root).expanduser().resolve()):
            raise DataError(f"data.test_root={test_root} lies inside data.root={root}, so "
                            f"its pictures would be trained on too; move it out of "
                            f"data.root")
        pictures = PictureFiles.find(Path(root).expanduser(), "data.root")
        classes, unlabelled_because = training_classes(pictures)
        # the test folder is listed and its classes checked before the slow part, decoding
        test_pictures = (None if test_root is None
                         else PictureFiles.find(Path(test_root).expanduser(), "data.test_root"))
        if classes is not None and test_pictures is not None:
            unlabelled_because = why_test_pictures_are_unlabelled(test_pictures, classes)
            if unlabelled_because:
                log.warning("%s, so the data is used without class labels", unlabelled_because)
                classes = None
        elif unlabelled_because:
            log.info("%s, so the data is unlabelled", unlabelled_because)
        images, targets = pictures.read(size, channels, classes)
        if test_pictures is not None:
            test, test_targets = test_pictures.read(size, channels, classes)
            n_val = default_n_val(len(images)) if n_val is None else n_val
            train, val = carve_validation(images, n_val, name)
            labels = (None if classes is None
                      else Labels.carved(targets, test_targets, classes, n_val, name))
        else:
            n_val = default_n_val(len(images) - n_test) if n_val is None else n_val
            train, val, test = split_shuffled(images, n_test, n_val, seed, name)
            labels = (None if classes is None
                      else Labels.shuffled(targets, classes, n_test, n_val, seed, name))
        log.info("%s: %d training, %d validation, %d test images of %dx%dx%d, %s", root,
                 len(train), 0 if val is None else len(val), len(test), channels, size, size,
                 "unlabelled" if classes is None else f"{len(classes)} classes")
        super().__init__(train, test, name=name, levels=256, val=val, hflip=hflip,
                         shift=shift, labels=labels)
        self.unlabelled_because = unlabelled_because or None
