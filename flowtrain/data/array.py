"""Your own points from an .npz file with arrays ``train`` and ``test``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowtrain.data.base import FlowData
from flowtrain.errors import DataError

_EXPECTED = "arrays `train` and `test` of shape [N] or [N, D], finite numbers"


class ArrayPoints(FlowData):
    """Points from ``data.path``; [N] arrays become [N, 1]."""

    def __init__(self, path: str, standardize: bool = True):
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"data.path={path}: no such file. Point data.path at an .npz "
                            f"file holding {_EXPECTED}.")
        try:
            with np.load(file, allow_pickle=False) as arrays:
                found = {key: arrays[key] for key in arrays.files}
        except (OSError, ValueError) as error:
            raise DataError(f"data.path={path}: not a readable .npz file ({error}). "
                            f"Expected {_EXPECTED}.") from error
        splits = {}
        for split in ("train", "test"):
            if split not in found:
                raise DataError(f"{file}: no `{split}` array (found: {sorted(found) or 'none'}). "
                                f"Expected {_EXPECTED}.")
            values = found[split]
            if not np.issubdtype(values.dtype, np.number) or values.ndim not in (1, 2):
                raise DataError(f"{file}: `{split}` has shape {values.shape} and dtype "
                                f"{values.dtype}. Expected {_EXPECTED}.")
            if values.size and not np.isfinite(values).all():
                raise DataError(f"{file}: `{split}` holds NaN or infinite values. "
                                f"Expected {_EXPECTED}.")
            values = values if values.ndim == 2 else values[:, None]
            splits[split] = torch.from_numpy(values.astype(np.float32))
        super().__init__(splits["train"], splits["test"], name=file.name,
                         standardize=standardize)
