"""RealNVP's parts: masks, squeeze, ActNorm, float32 invertibility, shape errors. Round trips
and log-dets against autograd, of the parts and of whole RealNVPs, are in test_bijections.py."""

from __future__ import annotations

import pytest
import torch

from flowtrain.errors import ConfigError
from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.coupling import channel_mask, checkerboard_mask
from flowtrain.flows.realnvp import RealNVP
from flowtrain.flows.reshape import squeeze
from flowtrain.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("make_mask", [checkerboard_mask, channel_mask])
def test_the_two_masks_of_a_kind_cover_every_element_once(make_mask):
    shape = (4, 6, 8)
    first, second = make_mask(shape, 0), make_mask(shape, 1)
    assert first.shape == (1, *shape)
    assert torch.equal(first + second, torch.ones(1, *shape))
    assert 0 < first.sum() < first.numel()


def test_checkerboard_alternates_between_neighbours():
    mask = checkerboard_mask((1, 4, 4), 0)[0, 0]
    assert torch.equal(mask[:, :-1] + mask[:, 1:], torch.ones(4, 3))
    assert torch.equal(mask[:-1] + mask[1:], torch.ones(3, 4))


def test_squeeze_keeps_patches_together():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    squeezed = squeeze(x)
    assert squeezed.shape == (2, 12, 2, 3)
    # the four values of the top-left 2x2 patch of channel 0 land in channels 0..3
    assert sorted(squeezed[0, :4, 0, 0].tolist()) == sorted(x[0, 0, :2, :2].flatten().tolist())


def test_actnorm_first_batch_comes_out_standardized():
    actnorm = ActNorm(3)
    x = 5.0 + 3.0 * torch.randn(64, 3, 4, 4)
    z, _ = actnorm(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert bool(actnorm.initialized)
    z_again, _ = actnorm(x + 100.0)  # no second initialization
    assert torch.allclose(z_again - z, 100.0 * actnorm.log_scale.exp().view(1, 3, 1, 1)
                          .expand_as(z), atol=1e-3)


def test_actnorm_survives_a_constant_channel():
    x = torch.zeros(8, 2, 4, 4)
    x[:, 1] = torch.randn(8, 4, 4)
    z, log_det = ActNorm(2)(x)
    assert torch.isfinite(z).all() and torch.isfinite(log_det).all()


def test_actnorm_state_survives_a_checkpoint(tmp_path):
    actnorm = ActNorm(2)
    actnorm(torch.randn(16, 2, 3, 3) * 4 + 1)
    save_checkpoint({"model": actnorm.state_dict()}, tmp_path / "a.pt")
    restored = ActNorm(2)
    restored.load_state_dict(load_checkpoint(tmp_path / "a.pt")["model"])
    assert bool(restored.initialized)
    x = torch.randn(4, 2, 3, 3)
    assert torch.equal(restored(x)[0], actnorm(x)[0])


def test_realnvp_inverts_to_1e4_in_float32():
    torch.manual_seed(0)
    flow = RealNVP((3, 8, 8), n_filters=16, n_blocks=2)
    flow(torch.rand(32, 3, 8, 8))  # ActNorm initialization on a first batch
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    x = torch.randn(16, 3, 8, 8)
    z, log_det = flow(x)
    assert torch.isfinite(log_det).all()
    assert (flow.inverse(z) - x).abs().max() < 1e-4


@pytest.mark.parametrize("shape, kwargs, message", [
    ((1, 28, 27), {}, "even height and width"),
    ((1, 28), {}, "takes images"),
    ((1, 6, 6), {"scales": 3}, "divisible by 4 .model.scales=3 squeezes 2 times.*lower model"),
    ((1, 8, 8), {"scales": 2, "channelwise": 2}, "shape the single-scale model"),
    ((1, 8, 8), {"scales": 0}, "at least 1"),
])
def test_realnvp_names_the_shape_constraint(shape, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RealNVP(shape, **kwargs)


@pytest.mark.parametrize("scales, couplings", [(1, 10), (2, 3 + 3 + 4), (3, 3 + 3 + 3 + 3 + 4)])
def test_every_scale_has_the_papers_couplings_and_factors_out_half(scales, couplings):
    """Section 3.6: 3 checkerboard, squeeze, 3 channel-wise per scale, the last scale 4
    checkerboard; the variables factored out at a scale are not touched after it."""
    from flowtrain.flows.coupling import AffineCoupling
    from flowtrain.flows.multiscale import OnKeptHalf

    flow = RealNVP((1, 8, 8), n_filters=4, n_blocks=1, scales=scales)
    assert sum(isinstance(module, AffineCoupling) for module in flow.modules()) == couplings
    finer = [module for module in flow.modules() if isinstance(module, OnKeptHalf)]
    assert len(finer) == scales - 1
    if finer:
        kept = torch.randn(2, 2, 4, 4)
        factored = torch.randn(2, 2, 4, 4)
        out, _ = finer[0](torch.cat([kept, factored], dim=1))
        assert torch.equal(out[:, 2:], factored)  # straight to the Gaussian base


def _perturbed_realnvp(shape=(1, 4, 4)) -> RealNVP:
    torch.manual_seed(0)
    flow = RealNVP(shape, n_filters=4, n_blocks=1)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return flow.eval()


def test_realnvp_samples_at_a_temperature():
    """Samples at temperature T are the inverse of T times the base noise (not T * x)."""
    flow = _perturbed_realnvp()
    cold = flow.sample(16, temperature=0.3, generator=torch.Generator().manual_seed(0))
    noise = torch.randn((16, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cold, flow.inverse(0.3 * noise), atol=1e-6)
    assert not torch.allclose(cold, 0.3 * flow.inverse(noise), atol=1e-3)


def test_consecutive_couplings_alternate_their_masks():
    """Each checkerboard or channel stage alternates parity, so every element is
    transformed by some coupling of the stage."""
    from flowtrain.flows.coupling import AffineCoupling

    flow = RealNVP((2, 4, 4), n_filters=4, n_blocks=1)
    couplings = [layer for layer in flow.transforms if isinstance(layer, AffineCoupling)]
    stages = [couplings[:4], couplings[4:7], couplings[7:]]
    for stage in stages:
        for first, second in zip(stage, stage[1:], strict=False):
            assert first.mask.shape == second.mask.shape
            assert torch.equal(first.mask + second.mask, torch.ones_like(first.mask))


def test_every_output_depends_on_other_inputs():
    """With masks alternating, z at each position depends on some other position of x."""
    flow = _perturbed_realnvp()
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v)[0].flatten(), x)
    jacobian = jacobian.reshape(16, 16)
    off_diagonal = jacobian - torch.diag(torch.diagonal(jacobian))
    assert (off_diagonal.abs().sum(dim=1) > 0).all()


def test_actnorm_initializes_once_even_after_loading_an_uninitialized_state():
    actnorm = ActNorm(1)
    fresh_state = {key: value.clone() for key, value in actnorm.state_dict().items()}
    actnorm(torch.randn(8, 1, 2, 2) * 3)
    actnorm.load_state_dict(fresh_state)
    actnorm(torch.randn(8, 1, 2, 2) * 5 + 2)
    assert bool(actnorm.initialized) and actnorm.bias.item() != 0


@pytest.mark.parametrize("block, count", [("basic", 388_370), ("bottleneck", 246_290)])
def test_parameter_counts_of_both_residual_blocks(block, count):
    """32 filters, 2 blocks on 1x8x8 (the no-argument run), 10 couplings. Per coupling on
    C channels: the weight-normalized 3x3 in (9*C*32 + 32 + 32), the blocks, the plain
    zero-initialized 3x3 out (9*32*2C + 2C), the log-scale's scale and shift (2C) and
    ActNorm (2C). A weight-normalized k x k convolution 32 -> 32 has 1024k^2 + 32 + 32:
    basic blocks 2 x 9280, bottleneck blocks 1088 + 9280 + 1088."""
    model = RealNVP((1, 8, 8), n_filters=32, n_blocks=2, residual_block=block)
    assert sum(parameter.numel() for parameter in model.parameters()) == count
