"""Your own data from an .npz file with arrays ``train`` and ``test``.

``data=array``: points, [N] or [N, D] numbers (continuous). ``data=image_array``: integer
images [N, H, W] or [N, C, H, W] with values in 0 .. levels-1 (``data.levels``, 256 unless
given), dequantized like any image set. The two options train with different settings
(conf/train/), so a file of the other kind is refused with the option to use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowtrain.data.base import FlowData, carve_validation, default_n_val
from flowtrain.data.images import as_images, looks_channels_last
from flowtrain.errors import DataError

_EXPECTED = ("arrays `train` and `test`: points of shape [N] or [N, D] (finite numbers), or "
             "images of shape [N, H, W], [N, C, H, W] or [N, H, W, C] with C of 1, 3 or 4 "
             "(integers in 0 .. data.levels-1)")


def _load(file: Path, path: str) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise DataError(f"data.path={path}: no such file. Point data.path at an .npz file "
                        f"holding {_EXPECTED}.")
    try:
        with np.load(file, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as error:
        raise DataError(f"data.path={path}: not a readable .npz file ({error}). "
                        f"Expected {_EXPECTED}.") from error


def _check(file: Path, split: str, values: np.ndarray, levels: int | None) -> None:
    if not np.issubdtype(values.dtype, np.number) or values.ndim not in (1, 2, 3, 4):
        raise DataError(f"{file}: `{split}` has shape {values.shape} and dtype {values.dtype}. "
                        f"Expected {_EXPECTED}.")
    if values.size and not np.isfinite(values).all():
        raise DataError(f"{file}: `{split}` holds NaN or infinite values. Expected {_EXPECTED}.")
    if values.ndim >= 3:
        if not np.issubdtype(values.dtype, np.integer):
            raise DataError(f"{file}: `{split}` looks like images (shape {values.shape}) but "
                            f"holds {values.dtype}; images must be integers in 0 .. "
                            f"data.levels-1.")
        if values.size and (values.min() < 0 or values.max() >= levels):
            raise DataError(f"{file}: `{split}` has values {values.min()} .. {values.max()}, "
                            f"outside 0 .. {levels - 1}; set data.levels to the number of "
                            f"levels.")


class ArrayData(FlowData):
    """``data=array data.path=FILE.npz``: points; with ``images``, ``ImageArrayData``.
    ``n_val`` of the training examples are the validation split (None: 10% of them)."""

    def __init__(self, path: str, standardize: bool = True, levels: int | None = None,
                 images: bool = False, n_val: int | None = None, hflip: bool = False,
                 shift: float = 0.0):
        file = Path(path).expanduser()
        found = _load(file, path)
        for split in ("train", "test"):
            if split not in found:
                raise DataError(f"{file}: no `{split}` array (found: {sorted(found) or 'none'}). "
                                f"Expected {_EXPECTED}.")
        ranks = {found["train"].ndim >= 3, found["test"].ndim >= 3}
        if len(ranks) > 1:
            raise DataError(f"{file}: `train` and `test` differ in shape: "
                            f"{found['train'].shape[1:]} vs {found['test'].shape[1:]}")
        holds_images = ranks.pop()
        if levels is not None and levels < 2:
            raise DataError(f"data.levels must be at least 2; got {levels}")
        image_levels = 256 if levels is None else levels
        if holds_images != images:
            kind = "images" if holds_images else "points"
            option, settings = (("image_array", "image") if holds_images
                                else ("array", "point"))
            raise DataError(f"{file} holds {kind} (train shape {found['train'].shape}): use "
                            f"data={option}, which trains with the {settings} settings "
                            f"(train={settings}s).")
        for split in ("train", "test"):
            _check(file, split, found[split], image_levels)
        if levels is not None and not images:
            raise DataError(f"{file}: data.levels is for images; these are points "
                            f"(shape {found['train'].shape}). Leave data.levels=null.")
        channels_last = images and looks_channels_last(found["train"].shape)
        splits = {}
        for split in ("train", "test"):
            values = found[split]
            if images:
                splits[split] = as_images(values.astype(np.int64), channels_last).to(
                    torch.uint8 if image_levels <= 256 else torch.int32)
            else:
                values = values if values.ndim == 2 else values[:, None]
                splits[split] = torch.from_numpy(values.astype(np.float32))
        n_val = default_n_val(len(splits["train"])) if n_val is None else n_val
        train, val = carve_validation(splits["train"], n_val, file.name)
        super().__init__(train, splits["test"], name=file.name,
                         levels=image_levels if images else levels,
                         standardize=standardize and not images, val=val, hflip=hflip,
                         shift=shift)


class ImageArrayData(ArrayData):
    """``data=image_array data.path=FILE.npz``: integer images with ``levels`` values."""

    def __init__(self, path: str, levels: int = 256, n_val: int | None = None,
                 hflip: bool = False, shift: float = 0.0):
        super().__init__(path, standardize=False, levels=levels, images=True, n_val=n_val,
                         hflip=hflip, shift=shift)
