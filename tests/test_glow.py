"""Glow's parts: the LU-form 1x1 convolution, the multi-scale priors, temperature sampling,
shape errors and ``model=glow`` through the real command. Round trips and log-dets against
autograd, of whole Glows and of each of their parts, are in test_bijections.py."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import read_metrics, run_cli

from flowtrain.errors import ConfigError
from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.conditioning import TopClassPredictor
from flowtrain.flows.glow import Glow
from flowtrain.flows.invconv import InvertibleConv1x1
from flowtrain.flows.mixture import bounded_log_scale
from flowtrain.flows.multiscale import LearnedPrior, SplitPrior
from flowtrain.flows.reshape import squeeze
from flowtrain.training.runtime import autocast

TINY_GLOW = ["model=glow", "model.levels=2", "model.steps=2", "model.n_filters=8",
             "train.steps=6", "train.batch_size=8", "train.eval_every=3",
             "train.sample_every=3", "train.checkpoint_every=3", "train.log_every=3",
             "train.eval_batch_size=64"]


def _perturb(module: torch.nn.Module, size: float = 0.3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(size * torch.randn(parameter.shape, generator=generator,
                                              dtype=parameter.dtype))


def _perturbed_glow(shape=(1, 8, 8), **kwargs) -> Glow:
    torch.manual_seed(0)
    flow = Glow(shape, **{"levels": 2, "steps": 2, "n_filters": 8, **kwargs})
    _perturb(flow, size=0.1)
    return flow.eval()


# --- invertible 1x1 convolution ------------------------------------------------------------


def test_invertible_conv_starts_as_the_orthogonal_matrix_it_factored():
    torch.manual_seed(3)
    orthogonal, _ = torch.linalg.qr(torch.randn(6, 6))
    torch.manual_seed(3)
    conv = InvertibleConv1x1(6)
    with torch.no_grad():
        weight = conv.weight()
    assert torch.allclose(weight, orthogonal, atol=1e-6)
    assert torch.allclose(weight @ weight.T, torch.eye(6), atol=1e-6)
    assert abs(conv.log_abs_diagonal.sum().item()) < 1e-5  # a rotation: log-det 0


def test_invertible_conv_applies_w_to_every_pixels_channels():
    torch.manual_seed(0)
    conv = InvertibleConv1x1(5).double()
    _perturb(conv)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    z, _ = conv(x)
    with torch.no_grad():
        by_pixel = torch.einsum("ij,bjhw->bihw", conv.weight(), x)
    assert torch.allclose(z, by_pixel, atol=1e-10)


def test_invertible_conv_ignores_parameters_outside_its_triangles():
    """L's diagonal and upper part, and U's lower part, never reach W, whatever the
    optimizer does to them."""
    torch.manual_seed(0)
    conv = InvertibleConv1x1(4)
    with torch.no_grad():
        before = conv.weight().clone()
        conv.lower.add_(torch.triu(torch.randn(4, 4)))
        conv.upper.add_(torch.tril(torch.randn(4, 4)))
        assert torch.equal(conv.weight(), before)


# --- the multi-scale priors -----------------------------------------------------------------


def test_priors_start_as_standard_normal():
    """Zero-initialized: eps = z and log-det 0, so an untrained Glow's prior is N(0, I)."""
    x = torch.randn(4, 8, 3, 3)
    for prior in (SplitPrior(8), LearnedPrior((8, 3, 3))):
        eps, log_det = prior(x)
        assert torch.equal(eps, x) and torch.equal(log_det, torch.zeros(4))


def test_split_prior_whitens_the_factored_half_given_the_kept_half():
    torch.manual_seed(0)
    split = SplitPrior(6)
    _perturb(split)
    x = torch.randn(5, 6, 4, 4)
    eps, log_det = split(x)
    mean, log_std = split.prior(x[:, :3])
    assert torch.equal(eps[:, :3], x[:, :3])  # the kept half passes through
    assert torch.allclose(eps[:, 3:], (x[:, 3:] - mean) / log_std.exp(), atol=1e-5)
    assert torch.allclose(log_det, -log_std.flatten(1).sum(1), atol=1e-4)
    # conditional: the factored half's noise depends on the kept half
    shifted, _ = split(x + torch.cat([torch.ones(5, 3, 4, 4), torch.zeros(5, 3, 4, 4)], 1))
    assert not torch.allclose(shifted[:, 3:], eps[:, 3:])


def test_glow_log_prob_is_the_priors_density_plus_the_steps_log_det():
    """One level by hand: log p(x) = log N(y; mu, sigma^2) + the steps' log-det, where y is
    the steps' output and (mu, sigma) the learned top prior."""
    torch.manual_seed(0)
    flow = Glow((1, 4, 4), levels=1, steps=1, n_filters=4, n_blocks=0).eval()
    prior = flow.transforms[-2]
    assert isinstance(prior, LearnedPrior)
    with torch.no_grad():
        prior.mean.fill_(0.5)
        prior.raw_log_std.fill_(-0.2)
    x = torch.randn(3, 1, 4, 4)
    steps_log_det = torch.zeros(3)
    with torch.no_grad():
        steps_out = squeeze(x)
        for layer in flow.transforms[1:-2]:
            steps_out, layer_log_det = layer(steps_out)
            steps_log_det += layer_log_det
    std = bounded_log_scale(torch.tensor(-0.2)).exp()
    expected = (torch.distributions.Normal(0.5, std).log_prob(steps_out).flatten(1).sum(1)
                + steps_log_det)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-3)


# --- the whole model -----------------------------------------------------------------------


def test_glow_inverts_to_1e4_in_float32_at_its_default_size():
    torch.manual_seed(0)
    flow = Glow((1, 8, 8))
    flow(torch.randn(64, 1, 8, 8))  # ActNorm initialization on data like the test's
    _perturb(flow, size=0.05)
    x = torch.randn(16, 1, 8, 8)
    z, log_det = flow(x)
    assert z.shape == x.shape and torch.isfinite(log_det).all()
    assert (flow.inverse(z) - x).abs().max() < 1e-4


def test_every_actnorm_in_glow_initializes_on_the_first_training_batch():
    torch.manual_seed(0)
    flow = Glow((1, 8, 8), levels=3, steps=2, n_filters=8)
    actnorms = [module for module in flow.modules() if isinstance(module, ActNorm)]
    assert len(actnorms) == 3 * 2 and not any(bool(a.initialized) for a in actnorms)
    x = 3.0 + 2.0 * torch.rand(64, 1, 8, 8)
    flow.train()
    flow(x)
    assert all(bool(a.initialized) for a in actnorms)
    # the first ActNorm sees the squeezed data and standardizes it per channel
    z, _ = actnorms[0](squeeze(x))
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)


def test_temperature_zero_gives_the_mean_sample():
    """T = 0: every factored-out half is its prior's mean given the coarser ones, so all
    samples are one deterministic image, the inverse of z = 0."""
    flow = _perturbed_glow()
    cold = flow.sample(4, temperature=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cold, cold[:1].expand_as(cold))
    assert torch.allclose(cold[:1], flow.inverse(torch.zeros(1, 1, 8, 8)), atol=1e-6)
    other = flow.sample(1, temperature=0.0, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(other, cold[:1], atol=1e-6)


def test_lower_temperature_gives_smaller_spread():
    flow = _perturbed_glow()
    spreads = []
    for temperature in (0.25, 0.5, 1.0):
        samples = flow.sample(256, temperature=temperature,
                              generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(samples).all()
        spreads.append(samples.std(dim=0).mean().item())
    assert spreads[0] < spreads[1] < spreads[2], spreads


def test_glow_state_dict_carries_its_permutations():
    """P and the signs of the 1x1 convolutions are buffers: a model built with another
    seed becomes the same density once loaded."""
    torch.manual_seed(0)
    trained = Glow((1, 4, 4), levels=2, steps=2, n_filters=4)
    torch.manual_seed(1)
    fresh = Glow((1, 4, 4), levels=2, steps=2, n_filters=4)
    fresh.load_state_dict(trained.state_dict())
    x = torch.randn(4, 1, 4, 4)
    assert torch.equal(fresh.eval().log_prob(x), trained.eval().log_prob(x))


def test_under_bf16_only_glows_networks_lose_precision():
    flow = _perturbed_glow()
    x = torch.rand(8, 1, 8, 8)
    with autocast(torch.device("cpu"), "bf16"):
        z, log_det = flow(x)
        log_prob = flow.log_prob(x)
    assert z.dtype == log_det.dtype == log_prob.dtype == torch.float32
    exact = flow.log_prob(x)
    assert not torch.equal(log_prob, exact)  # the coupling networks did run in bf16
    assert torch.allclose(log_prob, exact, rtol=0.05, atol=0.5)


@pytest.mark.parametrize("shape, kwargs, message", [
    ((1, 8, 12), {"levels": 3}, r"divisible by 2\*\*levels = 8; got 8x12. Lower model.levels"),
    ((3, 6, 6), {"levels": 2}, r"divisible by 2\*\*levels = 4"),
    ((1, 8), {}, "takes images"),
    ((1, 8, 8), {"steps": 0}, "at least 1"),
    ((1, 8, 8), {"levels": 0}, "at least 1"),
    ((1, 8, 8), {"n_blocks": -1}, "n_blocks at least 0"),
    ((1, 7, 8), {}, r"divisible by 2\*\*levels = 2; got 7x8"),  # auto: no level fits
    ((1, 8, 8), {"levels": "many"}, "a number or auto"),
])
def test_glow_names_the_shape_constraint(shape, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Glow(shape, **kwargs)


@pytest.mark.parametrize("shape, levels", [((1, 28, 28), 2), ((3, 32, 32), 3), ((1, 8, 8), 3),
                                           ((1, 4, 6), 1), ((3, 64, 64), 3)])
def test_auto_levels_fit_the_images_up_to_the_papers_three(shape, levels):
    """model=glow data=mnist works with the defaults: 28 = 4 x 7 takes two squeezes."""
    flow = Glow(shape, steps=1, n_filters=4, n_blocks=0)
    assert flow.levels == levels
    z, _ = flow(torch.rand(2, *shape))
    assert z.shape == (2, *shape)


def test_glow_trains_on_digits_end_to_end(tmp_path):
    run_cli(*TINY_GLOW, "data=digits", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics["steps"] == 6
    assert math.isfinite(metrics["test_bpd"]) and 0 < metrics["test_bpd"] < 8
    assert (tmp_path / "checkpoints" / "last.pt").exists()


def test_glow_refuses_images_its_levels_do_not_divide(tmp_path):
    result = run_cli(*TINY_GLOW, "data=digits", "model.levels=4", f"hydra.run.dir={tmp_path}",
                     cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "Lower model.levels" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


# --- the class prediction of the released conditional Glow (--weight_y) ------------------

def test_the_class_prediction_adds_to_the_training_loss_and_never_to_the_likelihood():
    """openai/glow model.py: bits_y = CE(linear_zeros(mean_hw(z_top))) / ln 2, loss =
    bits_x + weight_y * bits_y; in nats per example the penalty is weight_y * D * CE.
    linear_zeros starts at zero, so the first penalty is weight_y * D * ln(classes)."""
    torch.manual_seed(0)
    glow = Glow((1, 8, 8), levels=2, steps=1, n_filters=4, conditional=True, n_classes=3,
                weight_y=0.01).double()
    x, labels = torch.rand(5, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    glow.train()
    log_prob = glow.log_prob(x, labels)  # ActNorm initializes here
    penalty = glow.training_penalty()
    assert torch.allclose(penalty, torch.full((5,), 0.01 * 64 * math.log(3),
                                              dtype=torch.float64))
    assert glow.training_penalty() is None  # taken once
    glow.log_prob(x, labels)
    glow.training_penalty().sum().backward()
    classifier = next(module.classifier for module in glow.modules()
                      if isinstance(module, TopClassPredictor))
    assert classifier.linear.weight.grad.abs().sum() > 0  # it learns
    # the same weights without the predictor (a Glow of one part fewer): the same density
    plain = Glow((1, 8, 8), levels=2, steps=1, n_filters=4, conditional=True,
                 n_classes=3).double()
    kept = [value for name, value in glow.state_dict().items() if "classifier" not in name]
    plain.load_state_dict(dict(zip(plain.state_dict(), kept, strict=True)))
    glow.eval(), plain.eval()
    assert torch.allclose(glow.log_prob(x, labels), plain.log_prob(x, labels))
    assert torch.allclose(log_prob, plain.log_prob(x, labels))  # the likelihood alone
    assert glow.training_penalty() is None  # evaluation leaves none


@pytest.mark.parametrize("options", [{"weight_y": 0.01}, {"weight_y": -1.0, "conditional": True,
                                                        "n_classes": 3}])
def test_a_class_prediction_it_cannot_make_is_refused(options):
    with pytest.raises(ConfigError, match="model.weight_y"):
        Glow((1, 8, 8), levels=2, **options)
