"""The benchmark's baseline: RealNVP written the straightforward way the seed describes it.

The same layers and parameters as ``flowtrain.flows.realnvp.RealNVP`` (it takes that
model's modules), but each coupling repeats its mask for every batch and every layer
carries its log-det as a full per-element tensor [B, C, H, W], reshaped along with z and
summed only at the end. ``scripts/bench.py`` checks that both give the same log-density
before timing them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.coupling import AffineCoupling
from flowtrain.flows.realnvp import RealNVP
from flowtrain.flows.reshape import Squeeze, squeeze, unsqueeze


class PlainRealNVP(nn.Module):
    def __init__(self, model: RealNVP):
        super().__init__()
        self.layers = model.transforms

    def log_prob(self, x: Tensor) -> Tensor:
        log_det = torch.zeros_like(x)
        for layer in self.layers:
            if isinstance(layer, AffineCoupling):
                mask = layer.mask.repeat(x.shape[0], 1, 1, 1)
                raw_log_scale, translation = layer.coupling_net(x * mask).chunk(2, dim=1)
                log_scale = (layer.scale * torch.tanh(raw_log_scale) + layer.shift) * (1 - mask)
                x = x * torch.exp(log_scale) + translation * (1 - mask)
                log_det = log_det + log_scale
            elif isinstance(layer, ActNorm):
                layer(x)  # the data-dependent initialization, on the first batch
                x = (x + layer.bias) * torch.exp(layer.log_scale)
                log_det = log_det + layer.log_scale.expand_as(x)
            else:
                move = squeeze if isinstance(layer, Squeeze) else unsqueeze
                x, log_det = move(x), move(log_det)
        n_dims = x[0].numel()
        base = -0.5 * x.square().flatten(1).sum(dim=1) - 0.5 * n_dims * math.log(2 * math.pi)
        return base + log_det.flatten(1).sum(dim=1)


class CouplingNetworksOnly(nn.Module):
    """The coupling networks of a RealNVP alone, each on an input of the shape it sees
    inside the flow (which needs its gradient, as there): no masks, transforms, log-dets
    or base density. Its speed is the ceiling of any RealNVP with these networks, so
    ``scripts/bench.py`` shows how much of a step the rest can cost at most."""

    def __init__(self, model: RealNVP):
        super().__init__()
        couplings = [layer for layer in model.transforms if isinstance(layer, AffineCoupling)]
        self.coupling_nets = nn.ModuleList(coupling.coupling_net for coupling in couplings)
        self.input_shapes = [tuple(coupling.mask.shape[1:]) for coupling in couplings]

    def log_prob(self, x: Tensor) -> Tensor:
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for net, shape in zip(self.coupling_nets, self.input_shapes, strict=True):
            inputs = x.new_ones((x.shape[0], *shape)).requires_grad_()
            total = total + net(inputs).flatten(1).sum(dim=1)
        return total
