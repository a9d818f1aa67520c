"""An exponential moving average of the trained weights (``train.ema_decay`` > 0).

After each update step, a = decay * a + (1 - decay) * w for every parameter of the model
and of a learned dequantizer; buffers (ActNorm's statistics and its ``initialized`` flag,
standardization) are copied. The first update copies the weights outright, so the average
starts from the model after its first step, ActNorm's data-dependent initialization
included. Evaluation, pictures, ``best.pt`` selection and ``task=eval|sample`` use the
averaged weights when there are any.

Not ``torch.optim.swa_utils.AveragedModel``: it keeps its count in a tensor and reads it
on every update (``bool(self.n_averaged == 0)``, a host sync per step on a GPU), and it
either averages buffers or leaves them as they were when it was made, where ActNorm's
flag and statistics must be copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """Averaged copies of ``modules`` (name -> module), made before any ``compile``: a
    compiled module's copy would call the original's forward."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.averaged = {name: copy.deepcopy(module).requires_grad_(False).eval()
                         for name, module in modules.items()}
        self.updates = 0  # a Python count: checking it costs no device sync

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            averaged = self.averaged[name]
            targets = list(averaged.parameters())
            sources = [parameter.detach() for parameter in module.parameters()]
            if targets and self.updates == 0:
                torch._foreach_copy_(targets, sources)
            elif targets:
                torch._foreach_lerp_(targets, sources, 1.0 - self.decay)
            for target, source in zip(averaged.buffers(), module.buffers(), strict=True):
                target.copy_(source)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates,
                **{name: module.state_dict() for name, module in self.averaged.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.averaged.items():
            module.load_state_dict(state[name])
        self.updates = int(state["updates"])
