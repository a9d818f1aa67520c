"""Labels as users name them (``sample.label=7``, ``label="cat"``) turned into the int64
labels a class-conditional model takes, and the one-row-per-class layout of sample grids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

# Sample grids show at most this many classes, one row each.
MAX_CLASS_ROWS = 10


def _listed(classes: Sequence[str]) -> str:
    shown = ", ".join(f"{index} ({name})" if name != str(index) else name
                      for index, name in enumerate(classes[:12]))
    return shown + (f", ... ({len(classes)} classes)" if len(classes) > 12 else "")


def label_index(label: Any, classes: Sequence[str]) -> int:
    """A label given as its class name ("cat", or "7" for a folder called 7) or else its
    index (7) -> its index; an error that lists the classes for anything else. Names come
    first: image folders named 1 .. 12 sort as text, so folder "2" is not index 2."""
    if str(label) in classes:
        return list(classes).index(str(label))
    try:
        index = int(label)
    except (TypeError, ValueError):
        index = -1
    if isinstance(label, bool) or not 0 <= index < len(classes) or index != label:
        raise ValueError(f"label={label!r} is not a class of this model; give a class name "
                         f"or an index from 0 to {len(classes) - 1}: {_listed(classes)}")
    return index


def labels_for(label: Any, n: int, classes: Sequence[str]) -> Tensor:
    """int64 labels [n] from one label (every example that class) or one per example
    (a list, array or tensor)."""
    if isinstance(label, str) or np.ndim(label) == 0:
        single = label.item() if hasattr(label, "item") else label
        return torch.full((n,), label_index(single, classes), dtype=torch.long)
    labels = [label_index(each.item() if hasattr(each, "item") else each, classes)
              for each in list(label)]
    if len(labels) != n:
        raise ValueError(f"label= gives {len(labels)} labels for {n} examples: give one "
                         f"label, or one per example")
    return torch.tensor(labels, dtype=torch.long)


def class_rows(classes: Sequence[str], chosen: Sequence[Any] | None, per_row: int) -> Tensor:
    """Labels for a grid of one row per class, ``per_row`` samples each: the classes
    ``chosen`` (indices or names), or the first MAX_CLASS_ROWS."""
    if chosen:
        if len(chosen) > MAX_CLASS_ROWS:
            raise ValueError(f"at most {MAX_CLASS_ROWS} classes fit in a sample grid (one row "
                             f"each); {len(chosen)} were named")
        rows = [label_index(label, classes) for label in chosen]
    else:
        rows = list(range(min(len(classes), MAX_CLASS_ROWS)))
    return torch.tensor(rows, dtype=torch.long).repeat_interleave(per_row)
