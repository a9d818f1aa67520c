"""A 1-D Gaussian mixture with a known density, so runs can report the gap to the truth."""

from __future__ import annotations

import torch
from torch import Tensor

from flowtrain.data.base import FlowData, check_drawn_counts, draw_splits
from flowtrain.errors import DataError
from flowtrain.flows.mixture import Family, ScalarMixture


class GaussianMixture1D(FlowData):
    """Points x ~ sum_k w_k N(mean_k, std_k^2), drawn with a fixed seed, shape [N, 1]."""

    def __init__(self, weights: list[float], means: list[float], stds: list[float],
                 n_train: int = 20_000, n_test: int = 5_000, seed: int = 0,
                 standardize: bool = True, n_val: int = 2_000):
        if not len(weights) == len(means) == len(stds) > 0:
            raise DataError("data.weights, data.means and data.stds must be non-empty lists "
                            f"of one length; got {len(weights)}, {len(means)}, {len(stds)}")
        check_drawn_counts(n_train, n_val, n_test)
        if min(weights) <= 0 or min(stds) <= 0:
            raise DataError("data.weights and data.stds must all be positive")
        weights_tensor = torch.tensor(list(weights), dtype=torch.float64)
        self.mixture = ScalarMixture(
            logits=torch.log(weights_tensor / weights_tensor.sum()),
            loc=torch.tensor(list(means), dtype=torch.float64),
            log_scale=torch.log(torch.tensor(list(stds), dtype=torch.float64)),
            family=Family.gaussian,
        )
        train, val, test = draw_splits(self._draw, n_train, n_val, n_test, seed)
        super().__init__(train, test, name="gmm1d", standardize=standardize, val=val)

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        expanded = ScalarMixture(self.mixture.logits.expand(n, -1), self.mixture.loc,
                                 self.mixture.log_scale, self.mixture.family)
        return expanded.sample(generator=generator).float().unsqueeze(1)

    def true_log_prob(self, x: Tensor) -> Tensor:
        return self.mixture.log_pdf(x.double().squeeze(1)).to(x.dtype)
