"""What every data set hands the trainer: train/test tensors and how to score them."""

from __future__ import annotations

import math

from torch import Tensor

from flowtrain.errors import DataError


class FlowData:
    """Train and test tensors of shape [N, *event_shape], held in memory.

    ``levels`` is the number of discrete values per dimension for quantized data (None for
    continuous data); ``standardize`` asks for a fixed affine map to zero mean and unit
    variance in front of the model, whose log-det keeps the likelihood in data units.
    """

    def __init__(self, train: Tensor, test: Tensor, *, name: str,
                 levels: int | None = None, standardize: bool = False):
        for split, values in (("train", train), ("test", test)):
            if values.ndim < 2:
                raise DataError(f"{name}: the {split} split must have shape [N, ...]; "
                                f"got {tuple(values.shape)}")
            if values.shape[0] == 0:
                raise DataError(f"{name}: the {split} split is empty")
        if train.shape[1:] != test.shape[1:]:
            raise DataError(f"{name}: train and test points differ in shape: "
                            f"{tuple(train.shape[1:])} vs {tuple(test.shape[1:])}")
        self.train = train
        self.test = test
        self.name = name
        self.levels = levels
        self.standardize = standardize

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def n_dims(self) -> int:
        return math.prod(self.event_shape)

    def true_log_prob(self, x: Tensor) -> Tensor | None:
        """log density of the generating distribution, where it is known; else None."""
        return None
