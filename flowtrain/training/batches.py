"""An endless stream of shuffled training batches whose position can be checkpointed."""

from __future__ import annotations

import torch
from torch import Tensor

from flowtrain.errors import ConfigError
from flowtrain.training.augment import check_shift, random_offsets, translated


class BatchStream:
    """Batches from a fresh permutation each epoch, drawn from its own generator.

    The state is the generator's state at the start of the current epoch plus the position
    in it, so a resumed run replays exactly the order an uninterrupted run would see.
    Incomplete last batches are dropped so every step sees ``batch_size`` examples.
    ``hflip``: each image [C, H, W] is mirrored left to right with probability 1/2; the
    coin flips of an epoch are drawn with its order, so a resumed run replays them too.
    ``shift`` > 0: each image is translated by up to that fraction of its height and width
    (Glow's augmentation; ``augment.translated``), by offsets drawn with the order too.
    ``labels`` [N]: the examples' class labels, drawn with them (``next_labelled``).
    """

    def __init__(self, data: Tensor, batch_size: int, seed: int, hflip: bool = False,
                 labels: Tensor | None = None, shift: float = 0.0):
        if batch_size > len(data):
            raise ConfigError(f"train.batch_size={batch_size} is larger than the training set "
                             f"({len(data)} examples); lower train.batch_size.")
        if hflip and data.ndim != 4:
            raise ConfigError(f"data.hflip mirrors images [N, C, H, W]; this data has shape "
                              f"{tuple(data.shape)}. Leave data.hflip=false.")
        check_shift(shift, tuple(data.shape))
        if labels is not None and labels.shape != (len(data),):
            raise ValueError(f"labels of shape {tuple(labels.shape)} for {len(data)} examples")
        self.data = data
        self.labels = labels
        self.hflip = hflip
        self.shift = shift
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_start_state = self.generator.get_state()
        self._order = torch.randperm(len(self.data), generator=self.generator)
        self._mirrored = (torch.rand(len(self.data), generator=self.generator) < 0.5
                          if self.hflip else None)
        self._offsets = (random_offsets(len(self.data), *self.data.shape[-2:], self.shift,
                                        self.generator) if self.shift > 0 else None)
        self._position = 0

    def next(self) -> Tensor:
        """The next batch of examples."""
        return self.next_labelled()[0]

    def next_labelled(self, device: torch.device | None = None
                      ) -> tuple[Tensor, Tensor | None]:
        """The next batch of examples and their labels (None without labels), on
        ``device`` (default: where the data are), augmented there: a GPU translates a
        batch in a fraction of the time the host would."""
        if self._position + self.batch_size > len(self.data):
            self.epoch += 1
            self._start_epoch()
        index = self._order[self._position:self._position + self.batch_size]
        self._position += self.batch_size
        device = device or self.data.device
        batch = self.data[index].to(device, non_blocking=True)
        labels = (None if self.labels is None
                  else self.labels[index].to(device, non_blocking=True))
        if self._offsets is not None:  # translated first, then mirrored, as Keras does
            batch = translated(batch, self._offsets[index])
        if self._mirrored is not None:
            mirrored = self._mirrored[index].to(device, non_blocking=True)
            batch = torch.where(mirrored.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return batch, labels

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self._position,
                "epoch_start_state": self._epoch_start_state}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.generator.set_state(state["epoch_start_state"])
        self._start_epoch()
        self._position = state["position"]
