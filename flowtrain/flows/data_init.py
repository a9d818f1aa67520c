"""What every data-dependent initialization shares (ActNorm's, Flow++'s released layers'):
moments over the global batch, and a module that initializes itself on its first training
batch, once, and remembers it in its state (a resumed run does not start over)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def batch_moments(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and (biased) variance of ``x`` over ``dims``, over the global batch when it is
    split across processes (all-reduced), so that a data-dependent initialization leaves
    every process identical."""
    mean, mean_square = x.mean(dim=dims), x.square().mean(dim=dims)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        stats = torch.stack([mean, mean_square])
        torch.distributed.all_reduce(stats)
        mean, mean_square = stats / torch.distributed.get_world_size()
    return mean, mean_square - mean.square()


class InitializedOnFirstBatch(nn.Module):
    """A module with an ``initialized`` buffer (saved in checkpoints), set by its first
    training batch. The buffer is read once per process, not on every step: on a GPU each
    read would be a host sync. A subclass's forward asks ``needs_initializing()`` and, when
    it says so, sets its weights from that batch at once."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized_seen = False

    def needs_initializing(self) -> bool:
        """True on the first training batch of a module not yet initialized, and never
        after: the module counts as initialized from here, its caller sets the weights."""
        if not self.training or self._initialized_seen:
            return False
        self._initialized_seen = True
        if bool(self.initialized):
            return False
        self.initialized.fill_(True)
        return True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized_seen = False  # read the loaded buffer on the next batch
