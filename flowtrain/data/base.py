"""What every data set hands the trainer: train, validation and test tensors and how to
score them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flowtrain.errors import DataError

# The validation split is the same for every run on a data set, whatever its seed: runs
# compared on it must have been selected on the same examples.
VALIDATION_SEED = 0
# The data sets whose examples can carry class labels, named where model.conditional=true
# is refused on data without them.
LABELLED_DATA_SETS = ("digits, mnist, fashion_mnist, cifar10, image_folder with class "
                      "sub-folders, imagenet32/imagenet64 in the npz release")
# How the results in each unit (FlowData.reported_as, metrics.json's result_unit) read.
UNIT_NAMES = {"bpd": "bits/dim", "nll": "nats per point"}


def _validation_indices(n: int, n_val: int, name: str) -> tuple[Tensor, Tensor]:
    """(the training examples kept, in order; the ``n_val`` validation examples), chosen by
    a fixed permutation of ``n`` examples."""
    if not 0 <= n_val < n:
        raise DataError(f"{name}: data.n_val must be between 0 (no validation split) and "
                        f"{n - 1} (the training split has {n} examples); got {n_val}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return order[:n - n_val].sort().values, order[n - n_val:]


def carve_validation(train: Tensor, n_val: int, name: str) -> tuple[Tensor, Tensor | None]:
    """(train without the validation examples, the ``n_val`` validation examples), chosen
    by a fixed permutation; the training examples keep their order. n_val=0: (train, None)."""
    if len(train) == 0:  # FlowData names the empty split
        return train, None
    kept, validation = _validation_indices(len(train), n_val, name)
    if n_val == 0:
        return train, None
    return train[kept], train[validation]


def carve_validation_in_place(train: Tensor, n_val: int, name: str, chunk: int = 65_536
                              ) -> tuple[Tensor, Tensor | None]:
    """``carve_validation``'s split without a second copy of the training set: the kept
    examples are moved forward in place, chunk by chunk, and the result is a view of the
    first N - n_val rows. For data sets of many gigabytes (downsampled ImageNet)."""
    if len(train) == 0 or n_val == 0:
        return carve_validation(train, n_val, name)
    kept, validation = _validation_indices(len(train), n_val, name)
    validation_examples = train[validation]  # n_val examples: a small copy
    return keep_in_place(train, kept, chunk), validation_examples


def keep_in_place(examples: Tensor, kept: Tensor, chunk: int = 65_536) -> Tensor:
    """``examples[kept]`` for increasing indices ``kept``, as a view of ``examples`` whose
    first rows are overwritten: no second copy of a large tensor. Since kept[j] >= j, a
    chunk's sources lie at or after every row written so far, so no row is read after it
    has been overwritten."""
    for start in range(0, len(kept), chunk):
        rows = kept[start:start + chunk]
        examples[start:start + len(rows)] = examples[rows]
    return examples[:len(kept)]


def split_shuffled(examples: Tensor, n_test: int, n_val: int, seed: int, name: str
                   ) -> tuple[Tensor, Tensor | None, Tensor]:
    """(train, val or None, test) of a fixed set of examples: the last ``n_test`` of a
    permutation seeded with ``seed`` are the test split, and ``n_val`` of the rest are
    carved out for validation."""
    if not 0 < n_test < len(examples):
        raise DataError(f"{name}: data.n_test must be between 1 and {len(examples) - 1} "
                        f"(there are {len(examples)} examples); got {n_test}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    shuffled = examples[order]
    train, val = carve_validation(shuffled[:-n_test], n_val, name)
    return train, val, shuffled[-n_test:]


@dataclass(frozen=True)
class Labels:
    """The class of every example in each split, aligned with the split's rows: what a
    class-conditional flow p(x | y) is trained and evaluated on."""

    train: Tensor  # int64 [N_train]
    test: Tensor  # int64 [N_test]
    val: Tensor | None  # int64 [N_val], None when there is no validation split
    classes: tuple[str, ...]  # label k is classes[k]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def carved(cls, train: Tensor, test: Tensor, classes: Sequence[str], n_val: int,
               name: str) -> Labels:
        """The labels of a training split whose images went through ``carve_validation``
        (or its in-place twin) with the same ``n_val``: the selection depends only on the
        length, so the same call on the labels takes the same rows."""
        kept, val = carve_validation(train, n_val, name)
        return cls(kept, test, val, tuple(classes))

    @classmethod
    def shuffled(cls, labels: Tensor, classes: Sequence[str], n_test: int, n_val: int,
                 seed: int, name: str) -> Labels:
        """The labels of examples split by ``split_shuffled`` with the same arguments."""
        train, val, test = split_shuffled(labels, n_test, n_val, seed, name)
        return cls(train, test, val, tuple(classes))


def check_drawn_counts(n_train: int, n_val: int, n_test: int) -> None:
    """The split sizes of a data set drawn from a known distribution."""
    if n_train < 1 or n_test < 1 or n_val < 0:
        raise DataError(f"data.n_train and data.n_test must be at least 1 and data.n_val at "
                        f"least 0 (no validation split); got {n_train}, {n_test} and {n_val}")


def draw_splits(draw: Callable[[int, torch.Generator], Tensor], n_train: int, n_val: int,
                n_test: int, seed: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """(train, val or None, test) for a data set drawn from a known distribution by
    ``draw(n, generator)``. The validation points are extra draws, taken after the others:
    ``data.n_train`` stays the number of points trained on, and the training and test
    points are the ones runs from before the validation split drew."""
    generator = torch.Generator().manual_seed(seed)
    points = draw(n_train + n_test, generator)
    val = draw(n_val, generator) if n_val else None
    return points[:n_train], val, points[n_train:]


def as_stored(values: Tensor, levels: int | None) -> Tensor:
    """Data-space values in the dtype the data sets keep them in: uint8 for up to 256
    levels, int64 for more, floats as they are for continuous data."""
    if levels is None:
        return values
    return values.to(torch.uint8 if levels <= 256 else torch.int64)


def default_n_val(n_train: int) -> int:
    """10% of the training split (at least one example, when there are two), where a data
    set (your own file) has no fixed count."""
    return max(1, n_train // 10) if n_train >= 2 else 0


class FlowData:
    """Train, validation and test tensors of shape [N, *event_shape], held in memory.

    ``val`` (None when there is none) is what training evaluates and selects on; the test
    split is measured once, at the end. ``hflip`` asks for training images mirrored left
    to right at random (for data where a mirror image is as likely), ``shift`` for them
    translated at random by up to that fraction of their size (Glow's augmentation).
    ``levels`` is the number of discrete values per dimension for quantized data (None
    for continuous data); ``standardize`` asks for a fixed affine map to zero mean and
    unit variance in front of the model, whose log-det keeps the likelihood in data units.
    ``labels`` (None for unlabelled data) are the examples' classes, split the same way,
    for class-conditional flows.
    """

    def __init__(self, train: Tensor, test: Tensor, *, name: str,
                 levels: int | None = None, standardize: bool = False,
                 val: Tensor | None = None, hflip: bool = False, shift: float = 0.0,
                 labels: Labels | None = None):
        splits = {"train": train, "test": test, **({"val": val} if val is not None else {})}
        for split, values in splits.items():
            if values.ndim < 2:
                raise DataError(f"{name}: the {split} split must have shape [N, ...]; "
                                f"got {tuple(values.shape)}")
            if values.shape[0] == 0:
                raise DataError(f"{name}: the {split} split is empty")
            if values.shape[1:] != train.shape[1:]:
                raise DataError(f"{name}: train and {split} points differ in shape: "
                                f"{tuple(train.shape[1:])} vs {tuple(values.shape[1:])}")
        if labels is not None:
            _check_labels(labels, splits, name)
        self.train = train
        self.val = val
        self.test = test
        self.name = name
        self.levels = levels
        self.standardize = standardize
        self.hflip = hflip  # training batches mirrored at random (data.hflip)
        self.shift = shift  # and translated (data.shift)
        self.labels = labels  # None for unlabelled data
        # Which release of a data set this is, where releases differ in what they hold
        # (downsampled ImageNet); recorded in metrics.json as data_version.
        self.version: str | None = None
        # Why a data set that can carry labels has none here (loose pictures in an image
        # folder, npz batches without labels): said when a conditional model is refused.
        self.unlabelled_because: str | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def n_dims(self) -> int:
        return math.prod(self.event_shape)

    @property
    def n_classes(self) -> int:
        """How many classes the labels name; 0 for unlabelled data."""
        return 0 if self.labels is None else self.labels.n_classes

    @property
    def discrete(self) -> bool:
        """Quantized data, whose NLL in bits per dimension is a code length; for continuous
        points it is not (it can be negative, and depends on the data's units)."""
        return self.levels is not None

    @property
    def reported_as(self) -> str:
        """The suffix of the result keys runs are compared by: ``bpd`` (bits per dimension)
        for quantized data, ``nll`` (nats per point) for continuous points."""
        return "bpd" if self.discrete else "nll"

    @property
    def unit(self) -> str:
        return UNIT_NAMES[self.reported_as]

    @property
    def points_for_pictures(self) -> tuple[str, Tensor]:
        """("validation", points), else ("training", points): what pictures draw data
        points from; never the test points, which stay untouched until the end."""
        return ("validation", self.val) if self.val is not None else ("training", self.train)

    def split(self, name: str) -> Tensor:
        """The split called ``name`` (train, val or test); a clear error for a missing one."""
        values = {"train": self.train, "val": self.val, "test": self.test}[name]
        if values is None:
            raise DataError(f"{self.name} has no validation split (data.n_val=0): there is "
                            f"none to evaluate; use eval.split=test")
        return values

    def split_labels(self, name: str) -> Tensor | None:
        """The labels of the split called ``name``, aligned with ``split(name)``; None for
        unlabelled data."""
        self.split(name)  # the same error for a missing split
        return None if self.labels is None else getattr(self.labels, name)

    def true_log_prob(self, x: Tensor) -> Tensor | None:
        """log density of the generating distribution, where it is known; else None."""
        return None


def _check_labels(labels: Labels, splits: dict[str, Tensor], name: str) -> None:
    """Labels that a conditional flow can index its classes with: one int64 label per
    example of each split, each naming one of at least two classes."""
    if labels.n_classes < 2:
        raise DataError(f"{name}: labelled data needs at least 2 classes; got "
                        f"{list(labels.classes)}")
    if (labels.val is None) != ("val" not in splits):
        raise DataError(f"{name}: " + ("the validation split has no labels" if labels.val is None
                                       else "there are validation labels but no validation "
                                            "split"))
    for split, values in splits.items():
        given = getattr(labels, split)
        if (not isinstance(given, Tensor) or given.ndim != 1 or given.dtype != torch.int64
                or len(given) != len(values)):
            got = (f"{given.dtype} of shape {list(given.shape)}" if isinstance(given, Tensor)
                   else type(given).__name__)
            raise DataError(f"{name}: the {split} labels must be an int64 tensor of shape "
                            f"[{len(values)}], one per example; got {got}")
        if len(given) and not 0 <= int(given.min()) <= int(given.max()) < labels.n_classes:
            raise DataError(f"{name}: the {split} labels must be class indices in 0 .. "
                            f"{labels.n_classes - 1} ({labels.n_classes} classes); got "
                            f"{int(given.min())} .. {int(given.max())}")
