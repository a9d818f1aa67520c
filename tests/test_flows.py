"""Properties every flow must have, parametrized over all of them (a new flow joins FLOWS)."""

from __future__ import annotations

import pytest
import torch

from flowtrain.flows.base import FlowModel
from flowtrain.flows.mixture_cdf import MixtureCDFFlow


def _perturbed(model: FlowModel, seed: int = 0) -> FlowModel:
    """Move every parameter off its initial value so the tests see a generic flow."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator,
                                             dtype=parameter.dtype))
    return model


FLOWS = {
    "mixture_cdf-gaussian": lambda: MixtureCDFFlow((3,), n_components=4, family="gaussian"),
    "mixture_cdf-logistic": lambda: MixtureCDFFlow((3,), n_components=4, family="logistic"),
    "mixture_cdf-1component": lambda: MixtureCDFFlow((2,), n_components=1),
}


@pytest.fixture(params=sorted(FLOWS))
def flow(request) -> FlowModel:
    return _perturbed(FLOWS[request.param]()).double()


def _inputs(flow: FlowModel, n: int = 16, seed: int = 1) -> torch.Tensor:
    """Points where the flow has its mass: far out in the tails F(x) rounds to 0 or 1 and
    no CDF flow can be inverted, in any precision."""
    return flow.sample(n, generator=torch.Generator().manual_seed(seed))


def test_inverse_of_forward_is_identity(flow):
    x = _inputs(flow)
    z, _ = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-5)


def test_forward_of_inverse_is_identity(flow):
    z = torch.rand((16, *flow.event_shape), dtype=torch.float64,
                   generator=torch.Generator().manual_seed(2)) * 0.98 + 0.01
    x = flow.inverse(z)
    assert torch.allclose(flow(x)[0], z, atol=1e-6)


def test_log_det_matches_autograd_jacobian(flow):
    x = _inputs(flow, n=5)
    _, log_det = flow(x)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(
            lambda point: flow(point.unsqueeze(0))[0].flatten(), x[i])
        jacobian = jacobian.reshape(jacobian.shape[0], -1)
        expected = torch.linalg.slogdet(jacobian).logabsdet
        assert torch.allclose(log_det[i], expected, atol=1e-8), (log_det[i], expected)


def test_log_det_has_one_value_per_example(flow):
    x = _inputs(flow, n=7)
    z, log_det = flow(x)
    assert z.shape == x.shape and log_det.shape == (7,)


def test_samples_have_event_shape_and_are_finite(flow):
    samples = flow.sample(32, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (32, *flow.event_shape)
    assert torch.isfinite(samples).all()


@pytest.mark.parametrize("family", ["gaussian", "logistic"])
def test_1d_density_integrates_to_one(family):
    flow = _perturbed(MixtureCDFFlow((1,), n_components=5, family=family)).double()
    scale = flow.cdf_transform.log_scale.exp().max().item()
    grid = torch.linspace(-60 * scale - 10, 60 * scale + 10, 400_001,
                          dtype=torch.float64).unsqueeze(1)
    density = flow.log_prob(grid).exp().squeeze()
    integral = torch.trapezoid(density, grid.squeeze()).item()
    assert abs(integral - 1.0) < 1e-3, integral


@pytest.mark.parametrize("family", ["gaussian", "logistic"])
def test_inversion_and_ancestral_samplers_agree(family):
    from scipy.stats import ks_2samp

    flow = _perturbed(MixtureCDFFlow((1,), n_components=4, family=family), seed=3)
    by_inversion = flow.sample(4000, generator=torch.Generator().manual_seed(10))
    ancestral = flow.sample_ancestral(4000, generator=torch.Generator().manual_seed(11))
    result = ks_2samp(by_inversion.squeeze(1).numpy(), ancestral.squeeze(1).numpy())
    assert result.pvalue > 0.01, result


def test_samplers_match_the_model_cdf():
    """Both samplers against the model's own CDF (one-sample KS), not only each other."""
    from scipy.stats import kstest

    flow = _perturbed(MixtureCDFFlow((1,), n_components=3), seed=4).double()

    def model_cdf(values):
        points = torch.as_tensor(values, dtype=torch.float64).reshape(-1, 1)
        return flow(points)[0].squeeze(1).detach().numpy()

    for samples in (flow.sample(3000, generator=torch.Generator().manual_seed(5)),
                    flow.sample_ancestral(3000, generator=torch.Generator().manual_seed(6))):
        assert kstest(samples.squeeze(1).numpy(), model_cdf).pvalue > 0.01


@pytest.mark.parametrize("seed", range(20))
def test_log_prob_is_finite_far_in_the_tails_in_float32(seed):
    """z = F(x) must not round past 1 (softmax weights can sum to 1 + 1 ulp)."""
    flow = _perturbed(MixtureCDFFlow((1,), n_components=8), seed=seed)
    far = torch.tensor([[-30.0], [30.0], [1e4]])
    assert torch.isfinite(flow.log_prob(far)).all()
