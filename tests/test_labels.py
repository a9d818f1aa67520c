"""Class labels on FlowData: split with their examples by the same permutations as the
images, and checked at construction, with the data set named."""

from __future__ import annotations

import pytest
import torch

from flowtrain.data.base import (
    FlowData,
    Labels,
    carve_validation,
    carve_validation_in_place,
    split_shuffled,
)
from flowtrain.errors import DataError

N_CLASSES = 3


def numbered(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples [n, 2] holding their own index, and labels that follow from it."""
    examples = torch.arange(n).repeat_interleave(2).view(n, 2)
    return examples, examples[:, 0] % N_CLASSES


def assert_aligned(examples: torch.Tensor | None, labels: torch.Tensor | None) -> None:
    if examples is None:
        assert labels is None
        return
    assert labels.dtype == torch.int64 and torch.equal(examples[:, 0] % N_CLASSES, labels)


@pytest.mark.parametrize("n_val", [0, 1, 7])
def test_carved_labels_stay_with_their_examples(n_val):
    examples, labels = numbered(40)
    test_examples, test_labels = numbered(5)
    classes = [str(label) for label in range(N_CLASSES)]
    for carve in (carve_validation, carve_validation_in_place):
        train, val = carve(examples.clone(), n_val, "numbers")
        carved = Labels.carved(labels, test_labels, classes, n_val, "numbers")
        assert carved.classes == ("0", "1", "2") and carved.n_classes == N_CLASSES
        assert_aligned(train, carved.train)
        assert_aligned(val, carved.val)
        assert torch.equal(carved.test, test_labels)


@pytest.mark.parametrize("n_val, seed", [(0, 0), (6, 0), (6, 3)])
def test_shuffled_labels_stay_with_their_examples(n_val, seed):
    examples, labels = numbered(50)
    train, val, test = split_shuffled(examples, 9, n_val, seed, "numbers")
    shuffled = Labels.shuffled(labels, ["a", "b", "c"], 9, n_val, seed, "numbers")
    for split_examples, split_labels in ((train, shuffled.train), (val, shuffled.val),
                                         (test, shuffled.test)):
        assert_aligned(split_examples, split_labels)


def labelled_data(**changes) -> FlowData:
    """Ten training, four validation and three test points, with labels; ``changes``
    replace the labels' fields or, as ``val_points``, the validation points."""
    points = torch.zeros(17, 2)
    fields = {"train": torch.arange(10) % 2, "val": torch.tensor([0, 1, 1, 0]),
              "test": torch.tensor([1, 0, 1]), "classes": ("even", "odd")}
    val_points = changes.pop("val_points", points[10:14])
    return FlowData(points[:10], points[14:], val=val_points, name="tiny",
                    labels=Labels(**{**fields, **changes}))


def test_labels_are_given_per_split():
    data = labelled_data()
    assert data.n_classes == 2 and data.labels.classes == ("even", "odd")
    assert data.split_labels("val").tolist() == [0, 1, 1, 0]
    assert torch.equal(data.split_labels("train"), data.labels.train)
    unlabelled = FlowData(torch.zeros(4, 2), torch.zeros(2, 2), name="plain")
    assert unlabelled.labels is None and unlabelled.n_classes == 0
    assert unlabelled.split_labels("test") is None
    with pytest.raises(DataError, match="no validation split"):
        unlabelled.split_labels("val")


@pytest.mark.parametrize("changes, message", [
    ({"train": torch.arange(10, dtype=torch.int32) % 2}, "train labels must be an int64 "
                                                         r"tensor of shape \[10\]"),
    ({"test": torch.tensor([1, 0])}, r"test labels .* shape \[3\], one per example; got "
                                     r"torch.int64 of shape \[2\]"),
    ({"val": torch.zeros(4, 1, dtype=torch.int64)}, r"val labels .* shape \[4, 1\]"),
    ({"train": [0, 1] * 5}, "train labels must be an int64 tensor .* got list"),
    ({"val": None}, "validation split has no labels"),
    ({"val_points": None}, "validation labels but no validation split"),
    ({"test": torch.tensor([1, 2, 0])}, r"test labels must be class indices in 0 \.\. 1 "
                                        r"\(2 classes\); got 0 \.\. 2"),
    ({"train": torch.arange(10) % 2 - 1}, r"got -1 \.\. 0"),
    ({"classes": ("only",), "train": torch.zeros(10, dtype=torch.int64),
      "val": torch.zeros(4, dtype=torch.int64), "test": torch.zeros(3, dtype=torch.int64)},
     "at least 2 classes"),
])
def test_bad_labels_are_refused_naming_the_data_set(changes, message):
    with pytest.raises(DataError, match=f"^tiny: .*{message}"):
        labelled_data(**changes)
