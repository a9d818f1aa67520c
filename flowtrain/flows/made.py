"""MADE: a masked MLP whose outputs for dimension i see only the inputs before i.

Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
One pass gives the parameters of every conditional p(x_i | x_<i) of an autoregressive model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.errors import ConfigError


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a buffer)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def variable_order(order: list[int] | None, n_dims: int) -> list[int]:
    """``model.order`` as a list of ints, the natural order when it is null."""
    if order is None:
        return list(range(n_dims))
    order = [int(i) for i in order]
    if sorted(order) != list(range(n_dims)):
        raise ConfigError(f"model.order must be a permutation of 0..{n_dims - 1} for "
                          f"{n_dims}-dimensional data; got {order}")
    return order


def hidden_degrees(n_hidden: int, n_dims: int) -> Tensor:
    """Degrees 0 .. D-2 cycled over the hidden units, so every degree is represented."""
    return torch.arange(n_hidden) % max(1, n_dims - 1)


class MADE(nn.Module):
    """x [B, D] -> [B, D, outputs_per_dim]; block i depends only on x at ranks below i's.

    ``order`` is the variable order: ``order[r]`` is the dimension conditioned r-th
    (null: the natural order).
    """

    def __init__(self, n_dims: int, outputs_per_dim: int, hidden_features: int,
                 hidden_layers: int, order: list[int] | None = None):
        super().__init__()
        order = variable_order(order, n_dims)
        if hidden_layers > 0 and hidden_features < n_dims - 1:
            # Fewer hidden units than degrees would silently cut some x_j -> x_i paths.
            raise ConfigError(f"model.hidden_features must be at least D - 1 = {n_dims - 1} "
                              f"for {n_dims}-dimensional data; got {hidden_features}")
        self.n_dims = n_dims
        self.outputs_per_dim = outputs_per_dim
        rank = torch.empty(n_dims, dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(n_dims)
        self.register_buffer("rank", rank)
        layers: list[nn.Module] = []
        previous = rank
        for _ in range(hidden_layers):
            degrees = hidden_degrees(hidden_features, n_dims)
            mask = (degrees[:, None] >= previous[None, :]).float()
            layers += [MaskedLinear(len(previous), hidden_features, mask), nn.SiLU()]
            previous = degrees
        output_degrees = rank.repeat_interleave(outputs_per_dim)
        output_mask = (output_degrees[:, None] > previous[None, :]).float()
        self.output = MaskedLinear(len(previous), n_dims * outputs_per_dim, output_mask)
        self.hidden = nn.Sequential(*layers)

    @property
    def order(self) -> list[int]:
        """The variable order, read back from the masks' ranks (one source of truth)."""
        return self.rank.argsort().tolist()

    def forward(self, x: Tensor) -> Tensor:
        out = self.output(self.hidden(x))
        return out.view(x.shape[0], self.n_dims, self.outputs_per_dim)
