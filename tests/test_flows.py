"""What the flows do beyond the properties every bijection shares (those, and the list of
every model, are in test_bijections.py): densities that integrate to one, samplers that agree,
causal conditioners, construction errors and initial states."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from test_bijections import perturbed
from torch import nn

from flowtrain.errors import ConfigError
from flowtrain.flows.autoregressive import AutoregressiveFlow
from flowtrain.flows.causal import within
from flowtrain.flows.gated_pixelcnn import GatedPixelCNN
from flowtrain.flows.made import MADE
from flowtrain.flows.mixture_cdf import MixtureCDFFlow
from flowtrain.flows.pixelcnn import PixelCNN, PixelCNNFlow, PixelCNNMixtureCDF

SAMPLERS_TO_COMPARE = {
    "mixture_cdf-gaussian": lambda: MixtureCDFFlow((1,), n_components=4, family="gaussian"),
    "mixture_cdf-logistic": lambda: MixtureCDFFlow((1,), n_components=4, family="logistic"),
    "arflow2d": lambda: AutoregressiveFlow((2,), n_components=4, hidden_features=16),
    "arflow-3d-permuted": lambda: AutoregressiveFlow((3,), n_components=3, hidden_features=8,
                                                     order=[2, 0, 1]),
    "pixelcnn-3x2x2": lambda: PixelCNNFlow((3, 2, 2), n_components=3, n_filters=6,
                                           n_blocks=1),
    "pixelcnn-plain-3x2x2": lambda: PixelCNNFlow((3, 2, 2), n_components=3, n_filters=6,
                                                 n_blocks=1, network="plain"),
}


@pytest.mark.parametrize("family", ["gaussian", "logistic"])
def test_1d_density_integrates_to_one(family):
    flow = perturbed(MixtureCDFFlow((1,), n_components=5, family=family)).double()
    scale = flow.cdf_transform.log_scale.exp().max().item()
    grid = torch.linspace(-60 * scale - 10, 60 * scale + 10, 400_001,
                          dtype=torch.float64).unsqueeze(1)
    density = flow.log_prob(grid).exp().squeeze()
    integral = torch.trapezoid(density, grid.squeeze()).item()
    assert abs(integral - 1.0) < 1e-3, integral


@pytest.mark.parametrize("name", sorted(SAMPLERS_TO_COMPARE))
def test_inversion_and_ancestral_samplers_agree(name):
    """Two-sample KS per coordinate, and on x1 + x2 so the dependence is compared too."""
    from scipy.stats import ks_2samp

    flow = perturbed(SAMPLERS_TO_COMPARE[name](), seed=3)
    by_inversion = flow.sample(4000, generator=torch.Generator().manual_seed(10))
    ancestral = flow.sample_ancestral(4000, generator=torch.Generator().manual_seed(11))
    by_inversion, ancestral = by_inversion.flatten(1), ancestral.flatten(1)
    projections = [by_inversion.sum(1)] + list(by_inversion.T)
    ancestral_projections = [ancestral.sum(1)] + list(ancestral.T)
    for ours, theirs in zip(projections, ancestral_projections, strict=True):
        result = ks_2samp(ours.numpy(), theirs.numpy())
        assert result.pvalue > 0.01, result


def test_samplers_match_the_model_cdf():
    """Both samplers against the model's own CDF (one-sample KS), not only each other."""
    from scipy.stats import kstest

    flow = perturbed(MixtureCDFFlow((1,), n_components=3), seed=4).double()

    def model_cdf(values):
        points = torch.as_tensor(values, dtype=torch.float64).reshape(-1, 1)
        return flow(points)[0].squeeze(1).detach().numpy()

    for samples in (flow.sample(3000, generator=torch.Generator().manual_seed(5)),
                    flow.sample_ancestral(3000, generator=torch.Generator().manual_seed(6))):
        assert kstest(samples.squeeze(1).numpy(), model_cdf).pvalue > 0.01


@pytest.mark.parametrize("seed", range(20))
def test_log_prob_is_finite_far_in_the_tails_in_float32(seed):
    """z = F(x) must not round past 1 (softmax weights can sum to 1 + 1 ulp)."""
    flow = perturbed(MixtureCDFFlow((1,), n_components=8), seed=seed)
    far = torch.tensor([[-30.0], [30.0], [1e4]])
    assert torch.isfinite(flow.log_prob(far)).all()


@pytest.mark.parametrize("family", ["gaussian", "logistic"])
def test_2d_autoregressive_density_integrates_to_one(family):
    flow = perturbed(AutoregressiveFlow((2,), n_components=4, family=family,
                                         hidden_features=16), seed=7).double()
    axis = torch.linspace(-40, 40, 1601, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = torch.cat([flow.log_prob(chunk).exp() for chunk in grid.split(100_000)])
    density = density.view(len(axis), len(axis))
    integral = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis).item()
    assert abs(integral - 1.0) < 1e-2, integral


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 2, 0, 1, 3]])
@pytest.mark.parametrize("hidden_layers", [0, 1, 3])
def test_made_outputs_depend_only_on_earlier_inputs(order, hidden_layers):
    n_dims = len(order)
    made = MADE(n_dims, outputs_per_dim=3, hidden_features=10, hidden_layers=hidden_layers,
                order=order)
    perturbed(made)
    x = torch.randn(1, n_dims, requires_grad=True)
    for rank, dim in enumerate(order):
        (gradient,) = torch.autograd.grad(made(x)[0, dim].sum(), x)
        earlier = set(order[:rank])
        for other in range(n_dims):
            if other in earlier:
                assert gradient[0, other] != 0, (dim, other)
            else:
                assert gradient[0, other] == 0, (dim, other)


def test_autoregressive_flow_refuses_a_bad_order():
    with pytest.raises(ConfigError, match="permutation of 0..1"):
        AutoregressiveFlow((2,), order=[0, 0])


def test_autoregressive_flow_refuses_images():
    with pytest.raises(ConfigError, match=r"points of shape \[N, D\]"):
        AutoregressiveFlow((1, 4, 4))


def test_made_refuses_too_few_hidden_units():
    with pytest.raises(ConfigError, match="hidden_features must be at least D - 1 = 4"):
        AutoregressiveFlow((5,), hidden_features=2)


def test_autoregressive_flow_starts_as_an_unconditional_mixture():
    flow = AutoregressiveFlow((3,), n_components=4, hidden_features=8)
    mixture = flow.transforms[0].mixture(torch.randn(6, 3))
    for parameter in (mixture.logits, mixture.loc, mixture.log_scale):
        assert torch.allclose(parameter, parameter[:1].expand_as(parameter))


def test_variable_order_travels_with_the_state_dict():
    trained = AutoregressiveFlow((3,), n_components=2, hidden_features=8, order=[2, 0, 1])
    fresh = AutoregressiveFlow((3,), n_components=2, hidden_features=8)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.transforms[0].made.order == [2, 0, 1]


def _dependencies(net: nn.Module, channels: int, height: int,
                  width: int) -> Iterator[tuple[tuple[int, int, int], list, list]]:
    """For every value (c, i, j): the values at or after it and the values before it in
    raster-then-channel order, each with the summed |gradient| of its mixture parameters."""
    perturbed(net)
    # a few inputs at once, so no dependence hides behind a unit that happens to be off
    x = torch.randn(4, channels, height, width, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    rank = {(c, i, j): (i * width + j) * channels + c
            for c in range(channels) for i in range(height) for j in range(width)}
    for value, own in rank.items():
        (gradient,) = torch.autograd.grad(net(x)[(slice(None), *value)].sum(), x)
        gradient = gradient.abs().sum(dim=0)
        yield (value, [gradient[other] for other, r in rank.items() if r >= own],
               [gradient[other] for other, r in sorted(rank.items(), key=lambda kv: kv[1])
                if r < own])


@pytest.mark.parametrize("network", [PixelCNN, GatedPixelCNN])
@pytest.mark.parametrize("channels", [1, 3])
def test_pixelcnn_parameters_depend_only_on_earlier_values(network, channels):
    """Raster order, then channel order inside a pixel: the gradient of each value's
    mixture parameters is exactly zero for inputs at or after it, and not for all before."""
    net = network(channels, outputs_per_value=2, n_filters=24, n_blocks=2)
    for value, later, earlier in _dependencies(net, channels, height=4, width=3):
        assert all(gradient == 0 for gradient in later), value
        if earlier:  # the value just before it in the order is always seen
            assert earlier[-1] > 0, value
        if len(earlier) >= 3 * channels:  # and so is the pixel above (width 3)
            assert earlier[-3 * channels] > 0, value


@pytest.mark.parametrize("channels", [1, 3])
def test_gated_pixelcnn_has_no_blind_spot(channels):
    """Once the receptive field spans the image, every earlier value is seen by the gated
    network; the plain masked stack of the same depth misses the ones up and to the
    right (its blind spot)."""
    def unseen(network: type[nn.Module]) -> int:
        net = network(channels, outputs_per_value=2, n_filters=24, n_blocks=4)
        return sum(int(gradient == 0) for _, _, earlier in _dependencies(net, channels, 3, 8)
                   for gradient in earlier)

    assert unseen(GatedPixelCNN) == 0
    assert unseen(PixelCNN) > 0


@pytest.mark.parametrize("network", [PixelCNN, GatedPixelCNN])
def test_pixelcnn_sees_the_previous_pixel_and_channel(network):
    net = network(3, outputs_per_value=1, n_filters=24, n_blocks=1)
    perturbed(net)
    x = torch.randn(4, 3, 3, 3, requires_grad=True, generator=torch.Generator().manual_seed(0))
    (gradient,) = torch.autograd.grad(net(x)[:, 2, 1, 1].sum(), x)
    assert gradient[0, 0, 1, 1] != 0 and gradient[0, 1, 1, 1] != 0  # R and G of this pixel
    assert gradient[0, 2, 1, 0] != 0  # B of the pixel to the left


@pytest.mark.parametrize("network", ["plain", "gated"])
def test_a_pixels_window_gives_the_parameters_the_whole_image_gives(network):
    """The sampler passes only ``reach`` rows above and columns either side of each pixel:
    on an image larger than that window, every value's outputs are the whole image's."""
    transform = perturbed(PixelCNNMixtureCDF(3, 2, "logistic", n_filters=12, n_blocks=2,
                                             network=network))
    x = torch.randn(2, 3, 11, 12, generator=torch.Generator().manual_seed(0))
    smaller = 0
    with torch.no_grad():
        whole = transform.net(x)
        for at, visible in transform.fill_order(x.shape):
            _, _, row, _ = at
            smaller += x[visible][0, 0].numel() < (row + 1) * 12
            assert torch.allclose(transform.net(x[visible])[within(at, visible)], whole[at],
                                  atol=1e-5), at
    assert transform.net.reach == 5 and smaller > 0  # the windows are smaller than the image


def test_pixelcnn_flow_inverts_through_its_windows():
    torch.manual_seed(0)
    transform = perturbed(PixelCNNMixtureCDF(3, 3, "logistic", n_filters=9, n_blocks=1)).double()
    x = torch.randn(3, 3, 9, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        z, _ = transform(x)
        assert transform.net.reach == 4  # windows of at most 5 x 9 pixels
        assert torch.allclose(transform.inverse(z), x, rtol=0, atol=1e-5)


def test_pixelcnn_refuses_fewer_filters_than_colours():
    with pytest.raises(ConfigError, match=r"n_filters \(2\) at least the number of channels"):
        PixelCNNFlow((3, 4, 4), n_filters=2)


def test_pixelcnn_flow_starts_as_one_unconditional_mixture():
    flow = PixelCNNFlow((3, 4, 4), n_components=4, n_filters=6, n_blocks=1)
    mixture = flow.transforms[0].mixture(torch.randn(2, 3, 4, 4))
    for parameter in (mixture.logits, mixture.loc, mixture.log_scale):
        flat = parameter.reshape(-1, parameter.shape[-1])
        assert torch.allclose(flat, flat[:1].expand_as(flat))
