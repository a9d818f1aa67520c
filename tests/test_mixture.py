"""The shared mixture code against torch.distributions and against itself."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, Normal

from flowtrain.flows.mixture import ScalarMixture


def _params(batch=(5,), k=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (*batch, k)
    return (torch.randn(shape, generator=generator, dtype=torch.float64),
            3 * torch.randn(shape, generator=generator, dtype=torch.float64),
            0.5 * torch.randn(shape, generator=generator, dtype=torch.float64))


def test_gaussian_mixture_matches_torch_distributions():
    logits, loc, log_scale = _params()
    mixture = ScalarMixture(logits, loc, log_scale, "gaussian")
    reference = MixtureSameFamily(Categorical(logits=logits), Normal(loc, log_scale.exp()))
    x = torch.linspace(-8, 8, 5, dtype=torch.float64).unsqueeze(-1).expand(5, 5).T
    x = x.contiguous()
    for column in range(5):
        point = x[:, column]
        assert torch.allclose(mixture.log_pdf(point), reference.log_prob(point))
        assert torch.allclose(mixture.cdf(point), reference.cdf(point))


def test_logistic_component_matches_closed_form():
    mixture = ScalarMixture(torch.zeros(1, 1, dtype=torch.float64),
                            torch.full((1, 1), 2.0, dtype=torch.float64),
                            torch.zeros(1, 1, dtype=torch.float64), "logistic")
    x = torch.tensor([-1.0], dtype=torch.float64)
    u = x - 2.0
    assert torch.allclose(mixture.cdf(x), torch.sigmoid(u))
    expected = torch.log(torch.sigmoid(u) * torch.sigmoid(-u))
    assert torch.allclose(mixture.log_pdf(x), expected)


@pytest.mark.parametrize("family", ["gaussian", "logistic"])
def test_inverse_cdf_inverts_cdf(family):
    logits, loc, log_scale = _params(batch=(200,))
    mixture = ScalarMixture(logits, loc, log_scale, family)
    z = torch.rand(200, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = mixture.inverse_cdf(z)
    assert torch.allclose(mixture.cdf(x), z, atol=1e-7)


def test_log_pdf_stays_finite_far_in_the_tails():
    logits, loc, log_scale = _params()
    mixture = ScalarMixture(logits.float(), loc.float(), log_scale.float(), "gaussian")
    far = torch.full((5,), 1e3)
    assert torch.isfinite(mixture.log_pdf(far)).all()
    assert torch.isfinite(mixture.log_pdf(-far)).all()
