"""Properties every bijection and every model must have, checked on one list (zuko's
tests/test_transforms.py): the inverse round trips, log|det| is the log|det| of the autograd
Jacobian, shapes, and the context reaches the transform. A new flow or building block is
tested by joining CASES; ``test_every_bijection_in_flowtrain_is_in_the_list`` fails until it
does."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import flowtrain.flows
from flowtrain.dequant import Logit, NoDequantization, VariationalDequantization
from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.autoregressive import AutoregressiveFlow, AutoregressiveMixtureCDF
from flowtrain.flows.base import Bijection, Compose, FlowModel, Inverse, StandardNormal
from flowtrain.flows.conditioning import ClassPrior, TopClassPredictor
from flowtrain.flows.coupling import AffineCoupling, ResNet, channel_mask, checkerboard_mask
from flowtrain.flows.flowpp import FlowPlusPlus, HalvesInvertibleConv, MixLogisticCoupling
from flowtrain.flows.glow import Glow
from flowtrain.flows.glow_coupling import ReleasedGlowCoupling
from flowtrain.flows.invconv import DenseInvertibleConv1x1, InvertibleConv1x1
from flowtrain.flows.mixture_cdf import MixtureCDFFlow, MixtureCDFTransform
from flowtrain.flows.multiscale import LearnedPrior, OnKeptHalf, SplitPrior
from flowtrain.flows.pixelcnn import PixelCNNFlow, PixelCNNMixtureCDF
from flowtrain.flows.realnvp import RealNVP
from flowtrain.flows.reshape import ColumnHalves, SpaceToDepth, Squeeze, SwapHalves, Unsqueeze
from flowtrain.flows.tarflow import Patchify, TarFlow, TransformerAutoregressiveBlock
from flowtrain.likelihood import Identity, Preprocessing, Standardize, negative_log_likelihood

Sampler = Callable[[nn.Module, int, torch.Generator], Tensor]
LEVELS = 17  # of the data the variational dequantizer's noise is conditioned on


def perturbed(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Move every parameter off its initial value so the tests see a generic transform."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator,
                                               dtype=parameter.dtype))
    return module


# --- where each entry's inputs live ---------------------------------------------------------


def normal(*event_shape: int) -> Sampler:
    return lambda _, n, generator: torch.randn((n, *event_shape), generator=generator,
                                               dtype=torch.float64)


def unit_interval(*event_shape: int) -> Sampler:
    """Inside (0, 1) and away from its ends, where a CDF or a logit can be inverted."""
    return lambda _, n, generator: 0.01 + 0.98 * torch.rand(
        (n, *event_shape), generator=generator, dtype=torch.float64)


def cdf_samples(*event_shape: int) -> Sampler:
    """Samples of a CDF transform's density: far out in the tails F(x) rounds to 0 or 1 and
    no CDF can be inverted, in any precision."""
    def sample(transform: nn.Module, n: int, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return transform.inverse(unit_interval(*event_shape)(transform, n, generator))
    return sample


def model_samples(flow: nn.Module, n: int, generator: torch.Generator) -> Tensor:
    return flow.sample(n, generator=generator)


def class_labels(n_classes: int) -> Sampler:
    """Labels in {0, ..., n_classes - 1}: what a class-conditional model is conditioned on."""
    return lambda _, n, generator: torch.randint(0, n_classes, (n,), generator=generator)


def levels(*event_shape: int) -> Sampler:
    """Discrete data in {0, ..., K-1}: what the variational dequantizer is conditioned on."""
    return lambda _, n, generator: torch.randint(
        0, LEVELS, (n, *event_shape), generator=generator).double()


# --- building blocks that need more than their constructor -----------------------------------


def initialized_actnorm(n_channels: int, size: tuple[int, int] | None = None) -> ActNorm:
    """ActNorm after its data-dependent initialization on a first training batch."""
    actnorm = ActNorm(n_channels, size)
    actnorm(3.0 + 2.0 * torch.randn(32, n_channels, *(size or (3, 3))))
    return actnorm


def coupling(make_mask, shape: tuple[int, int, int], context_channels: int = 0
             ) -> AffineCoupling:
    channels = shape[0]
    return AffineCoupling(make_mask(shape, 0), ResNet(channels + context_channels,
                                                      2 * channels, n_filters=4, n_blocks=1),
                          conditional=context_channels > 0)


class NoiseTransform(Bijection):
    """The variational dequantizer's u = sigmoid(g(eps; x)), with the data x as the context.

    flowtrain never inverts it (q(u | x) is only sampled and scored), so its inverse is
    written here: eps = g^-1(logit u; features of x)."""

    def __init__(self, shape: tuple[int, int, int], **options):
        super().__init__()
        options = {"n_couplings": 3, "n_filters": 6, "n_blocks": 1, "context_channels": 3,
                   **options}
        self.dequantizer = VariationalDequantization(LEVELS, 0.05, event_shape=shape,
                                                     **options)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.dequantizer.transform_noise(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.dequantizer.couplings.inverse(torch.logit(z),
                                                  self.dequantizer.context(context))


@dataclass(frozen=True)
class Case:
    """One entry: how to build it, where its inputs live (points where it is invertible),
    what it is conditioned on, and the event shape of z where a reshape changes it."""

    build: Callable[[], nn.Module]
    inputs: Sampler
    context: Sampler | None = None
    z_shape: tuple[int, ...] | None = None
    # inputs drawn from the model under their context (a conditional model's samples of
    # their classes) rather than by ``inputs``
    sampled_given_context: bool = False


MODELS = {
    "mixture_cdf-gaussian": lambda: MixtureCDFFlow((3,), n_components=4, family="gaussian"),
    "mixture_cdf-logistic": lambda: MixtureCDFFlow((3,), n_components=4, family="logistic"),
    "mixture_cdf-1component": lambda: MixtureCDFFlow((2,), n_components=1),
    "arflow2d": lambda: AutoregressiveFlow((2,), n_components=4, hidden_features=16),
    "arflow2d-logistic-reversed": lambda: AutoregressiveFlow(
        (2,), n_components=3, family="logistic", hidden_features=8, order=[1, 0]),
    "arflow-4d-permuted": lambda: AutoregressiveFlow(
        (4,), n_components=3, hidden_features=12, hidden_layers=3, order=[2, 0, 3, 1]),
    "arflow-1d-no-hidden": lambda: AutoregressiveFlow((1,), n_components=3, hidden_layers=0),
    "realnvp-1x4x4": lambda: RealNVP((1, 4, 4), n_filters=4, n_blocks=1),
    "realnvp-3x4x4": lambda: RealNVP((3, 4, 4), n_filters=4, n_blocks=1, checkerboard_in=2,
                                     channelwise=2, checkerboard_out=1),
    "realnvp-2x2x6": lambda: RealNVP((2, 2, 6), n_filters=3, n_blocks=0),
    "realnvp-2scales-1x4x4": lambda: RealNVP((1, 4, 4), n_filters=3, n_blocks=1, scales=2),
    "realnvp-3scales-2x4x4": lambda: RealNVP((2, 4, 4), n_filters=3, n_blocks=0, scales=3),
    "realnvp-bottleneck-3x4x4": lambda: RealNVP((3, 4, 4), n_filters=4, n_blocks=2,
                                                checkerboard_in=2, channelwise=1,
                                                checkerboard_out=1,
                                                residual_block="bottleneck"),
    "glow-1x4x4-2levels": lambda: Glow((1, 4, 4), levels=2, steps=2, n_filters=4, n_blocks=1),
    "glow-3x4x4": lambda: Glow((3, 4, 4), levels=2, steps=1, n_filters=4, n_blocks=0),
    "glow-2x4x8-1level": lambda: Glow((2, 4, 8), levels=1, steps=3, n_filters=3, n_blocks=1),
    "glow-released-affine-3x4x4": lambda: Glow((3, 4, 4), levels=2, steps=2, n_filters=5,
                                               network="released"),
    "glow-released-additive-1x4x4": lambda: Glow((1, 4, 4), levels=2, steps=2, n_filters=4,
                                                 network="released", coupling="additive"),
    "pixelcnn-1x4x4": lambda: PixelCNNFlow((1, 4, 4), n_components=3, n_filters=6, n_blocks=1),
    "pixelcnn-3x3x3-gaussian": lambda: PixelCNNFlow((3, 3, 3), n_components=2,
                                                    family="gaussian", n_filters=6, n_blocks=2),
    "pixelcnn-plain-3x3x3": lambda: PixelCNNFlow((3, 3, 3), n_components=2, n_filters=6,
                                                 n_blocks=1, network="plain"),
    "pixelcnn-no-blocks-1x3x3": lambda: PixelCNNFlow((1, 3, 3), n_components=2, n_filters=4,
                                                     n_blocks=0),
    "flowpp-1x4x4": lambda: FlowPlusPlus((1, 4, 4), n_filters=4, n_blocks=1, n_components=3,
                                         heads=2, column_in=2, channelwise=1, column_out=1),
    "flowpp-3x2x4-one-head": lambda: FlowPlusPlus((3, 2, 4), n_filters=2, n_blocks=1,
                                                   n_components=2, heads=1, column_in=1,
                                                   channelwise=1, column_out=1),
    "tarflow-1x4x4": lambda: TarFlow((1, 4, 4), patch_size=2, width=8, blocks=2,
                                     layers_per_block=1, head_dim=4),
    "tarflow-2x2x6-3blocks-uncached": lambda: TarFlow(
        (2, 2, 6), patch_size=1, width=6, blocks=3, layers_per_block=2, head_dim=3,
        expansion=2, kv_cache=False),
    "tarflow-bounded-1x4x4": lambda: TarFlow((1, 4, 4), patch_size=2, width=8, blocks=2,
                                             layers_per_block=1, head_dim=4,
                                             max_log_scale=0.5),
}

# Class-conditional models (model.conditional=true), with N_CLASSES classes: checked on
# samples of the classes they are given.
N_CLASSES = 3
CONDITIONAL_MODELS = {
    "realnvp-conditional-1x4x4": lambda: RealNVP((1, 4, 4), n_filters=4, n_blocks=1,
                                                 conditional=True, n_classes=N_CLASSES),
    "realnvp-conditional-2scales-1x4x4": lambda: RealNVP(
        (1, 4, 4), n_filters=3, n_blocks=1, scales=2, conditional=True, n_classes=N_CLASSES),
    "glow-conditional-1x4x4-2levels": lambda: Glow((1, 4, 4), levels=2, steps=2, n_filters=4,
                                                   conditional=True, n_classes=N_CLASSES,
                                                   weight_y=0.01),
    "pixelcnn-conditional-1x4x4": lambda: PixelCNNFlow(
        (1, 4, 4), n_components=3, n_filters=6, n_blocks=2, conditional=True,
        n_classes=N_CLASSES),
    "pixelcnn-conditional-plain-2x3x3": lambda: PixelCNNFlow(
        (2, 3, 3), n_components=2, n_filters=4, n_blocks=1, network="plain",
        conditional=True, n_classes=N_CLASSES),
    "flowpp-conditional-1x4x4": lambda: FlowPlusPlus(
        (1, 4, 4), n_filters=4, n_blocks=1, n_components=3, heads=2, column_in=1,
        channelwise=1, column_out=1, conditional=True, n_classes=N_CLASSES),
    "tarflow-conditional-1x4x4": lambda: TarFlow((1, 4, 4), patch_size=2, width=8, blocks=2,
                                                 layers_per_block=1, head_dim=4,
                                                 conditional=True, n_classes=N_CLASSES),
}

CASES = {
    # the building blocks of the image flows
    "actnorm": Case(lambda: initialized_actnorm(3), normal(3, 2, 3)),
    "invertible_conv_1x1": Case(lambda: InvertibleConv1x1(4), normal(4, 2, 3)),
    "squeeze": Case(Squeeze, normal(2, 4, 2), z_shape=(8, 2, 1)),
    "unsqueeze": Case(Unsqueeze, normal(8, 1, 2), z_shape=(2, 2, 4)),
    "affine_coupling-checkerboard": Case(lambda: coupling(checkerboard_mask, (2, 3, 4)),
                                         normal(2, 3, 4)),
    "affine_coupling-channel": Case(lambda: coupling(channel_mask, (4, 2, 2)),
                                    normal(4, 2, 2)),
    "affine_coupling-context": Case(lambda: coupling(checkerboard_mask, (1, 4, 4), 3),
                                    normal(1, 4, 4), context=normal(3, 4, 4)),
    "split_prior": Case(lambda: SplitPrior(5), normal(5, 2, 2)),
    "released_glow_coupling-affine": Case(lambda: ReleasedGlowCoupling(5, 4, "affine"),
                                          normal(5, 3, 2)),
    "released_glow_coupling-additive": Case(lambda: ReleasedGlowCoupling(4, 3, "additive"),
                                            normal(4, 2, 3)),
    "learned_prior": Case(lambda: LearnedPrior((2, 2, 3)), normal(2, 2, 3)),
    "class_prior": Case(lambda: ClassPrior((2, 2, 3), N_CLASSES), normal(2, 2, 3),
                        context=class_labels(N_CLASSES)),
    # the identity in the likelihood; its class prediction (training only): test_glow.py
    "top_class_predictor": Case(lambda: TopClassPredictor(2, N_CLASSES, 0.01, 12),
                                normal(2, 2, 3)),
    # Flow++'s parts
    "actnorm-per-position": Case(lambda: initialized_actnorm(3, size=(3, 3)),
                                 normal(3, 3, 3)),
    "space_to_depth": Case(SpaceToDepth, normal(2, 4, 2), z_shape=(8, 2, 1)),
    "inverse-space_to_depth": Case(lambda: Inverse(SpaceToDepth()), normal(8, 1, 2),
                                   z_shape=(2, 2, 4)),
    "column_halves": Case(ColumnHalves, normal(2, 3, 4), z_shape=(4, 3, 2)),
    "swap_halves": Case(SwapHalves, normal(4, 2, 3)),
    "halves_invertible_conv": Case(lambda: HalvesInvertibleConv(6), normal(6, 2, 2)),
    # TarFlow's parts: tokens [B, T, D]
    "patchify": Case(lambda: Patchify((2, 4, 6), 2), normal(2, 4, 6), z_shape=(6, 8)),
    "transformer_autoregressive_block": Case(
        lambda: TransformerAutoregressiveBlock(5, 3, width=8, n_layers=2, head_dim=4),
        normal(5, 3)),
    "transformer_autoregressive_block-flipped-uncached": Case(
        lambda: TransformerAutoregressiveBlock(4, 2, width=4, n_layers=1, head_dim=2,
                                               flip=True, kv_cache=False), normal(4, 2)),
    "dense_invertible_conv_1x1": Case(lambda: DenseInvertibleConv1x1(3), normal(3, 2, 2)),
    # an inverse whose log-det is not zero: its sign is checked
    "inverse-dense_invertible_conv_1x1": Case(lambda: Inverse(DenseInvertibleConv1x1(3)),
                                              normal(3, 2, 2)),
    "mix_logistic_coupling": Case(
        lambda: MixLogisticCoupling(4, (2, 3), n_filters=4, n_blocks=1, n_components=3,
                                    heads=2, dropout=0.0, init="released"), normal(4, 2, 3)),
    "mix_logistic_coupling-context": Case(
        lambda: MixLogisticCoupling(2, (3, 2), n_filters=4, n_blocks=2, n_components=2,
                                    heads=1, dropout=0.0, context_channels=2,
                                    init="identity"),
        normal(2, 3, 2), context=normal(2, 3, 2)),
    # the context goes through a composition (and a multi-scale half) to every part;
    # the unconditional ones ignore it
    "compose": Case(lambda: Compose([initialized_actnorm(2), InvertibleConv1x1(2),
                                     coupling(channel_mask, (2, 2, 3), 2),
                                     coupling(checkerboard_mask, (2, 2, 3)),
                                     LearnedPrior((2, 2, 3))]),
                    normal(2, 2, 3), context=normal(2, 2, 3)),
    "on_kept_half": Case(lambda: OnKeptHalf([InvertibleConv1x1(2),
                                             coupling(checkerboard_mask, (2, 2, 3), 1)]),
                         normal(4, 2, 3), context=normal(1, 2, 3)),
    # preprocessing and dequantization
    "standardize": Case(lambda: Standardize(torch.tensor([1.0, -2.0, 0.5]),
                                            torch.tensor([0.5, 3.0, 2.0])), normal(3)),
    "identity": Case(Identity, normal(2, 2)),
    "logit": Case(lambda: Logit(0.05), unit_interval(1, 2, 2)),
    "variational_noise-1x2x2": Case(lambda: NoiseTransform((1, 2, 2)), normal(1, 2, 2),
                                    context=levels(1, 2, 2)),
    "variational_noise-2x3x2": Case(lambda: NoiseTransform((2, 3, 2)), normal(2, 3, 2),
                                    context=levels(2, 3, 2)),
    "variational_noise-mixture_logistic": Case(
        lambda: NoiseTransform((2, 2, 4), coupling="mixture_logistic", n_couplings=2,
                               n_filters=4, context_channels=2, n_components=2, heads=2),
        normal(2, 2, 4), context=levels(2, 2, 4)),
    # the CDF transforms of the 1-D and autoregressive flows
    "mixture_cdf_transform": Case(lambda: MixtureCDFTransform(3, 3, "logistic"),
                                  cdf_samples(3)),
    "autoregressive_mixture_cdf": Case(
        lambda: AutoregressiveMixtureCDF(3, 3, "gaussian", hidden_features=6, hidden_layers=1,
                                         order=[2, 0, 1]), cdf_samples(3)),
    "pixelcnn_mixture_cdf-gated": Case(
        lambda: PixelCNNMixtureCDF(2, 2, "logistic", n_filters=4, n_blocks=1),
        cdf_samples(2, 2, 3)),
    "pixelcnn_mixture_cdf-plain": Case(
        lambda: PixelCNNMixtureCDF(2, 2, "gaussian", n_filters=4, n_blocks=1, network="plain"),
        cdf_samples(2, 2, 3)),
    # a conditional model: the context reaches its couplings through FlowModel
    "flow_model-conditional": Case(
        lambda: FlowModel([coupling(checkerboard_mask, (1, 4, 4), 2),
                           coupling(checkerboard_mask, (1, 4, 4)),
                           coupling(channel_mask, (1, 4, 4), 2)],
                          StandardNormal((1, 4, 4))),
        normal(1, 4, 4), context=normal(2, 4, 4)),
    # every model, on samples of its own density
    **{name: Case(build, model_samples) for name, build in MODELS.items()},
    **{name: Case(build, model_samples, context=class_labels(N_CLASSES),
                  sampled_given_context=True)
       for name, build in CONDITIONAL_MODELS.items()},
}


# Entries pushed less far off their initial weights. The released Glow coupling scales its
# last convolution by exp(3 logs) and its inverse divides by sigmoid(h + 2): the usual push
# of 0.3 gives scales near e^-20, and samples (its inputs here) that overflow.
# Flow++ stacks up to 9 couplings whose component log-scales are bounded only from below
# (as released): pushed by 0.3, sampling through them overflows, and the dequantizer's
# sigmoid rounds to 1. TarFlow's log-scales are unbounded too (as released), and each block
# multiplies a token by exp(alpha) of every token before it: 0.3 overflows the same way.
GENTLER_PERTURBATION = {"glow-released-affine-3x4x4": 0.05,
                        "glow-released-additive-1x4x4": 0.05,
                        "released_glow_coupling-affine": 0.05,
                        "released_glow_coupling-additive": 0.05,
                        "flowpp-1x4x4": 0.1, "flowpp-3x2x4-one-head": 0.1,
                        "flowpp-conditional-1x4x4": 0.1,
                        "variational_noise-mixture_logistic": 0.1,
                        **dict.fromkeys(["tarflow-1x4x4", "tarflow-2x2x6-3blocks-uncached",
                                         "tarflow-bounded-1x4x4",
                                         "tarflow-conditional-1x4x4",
                                         "transformer_autoregressive_block",
                                         "transformer_autoregressive_block-flipped-uncached"],
                                        0.05)}


def build(name: str) -> nn.Module:
    # eval(): ActNorm's data-dependent initialization is a training-time step, tested apart.
    torch.manual_seed(0)  # the same initial weights whatever ran before
    scale = GENTLER_PERTURBATION.get(name, 0.3)
    return perturbed(CASES[name].build(), scale=scale).double().eval()


@dataclass(frozen=True)
class Entry:
    """A built entry of CASES with 16 inputs (and contexts) to check it on."""

    transform: nn.Module
    x: Tensor
    context: Tensor | None
    case: Case

    def first(self, n: int) -> tuple[Tensor, Tensor | None]:
        return self.x[:n], None if self.context is None else self.context[:n]


def _entry(name: str) -> Entry:
    case, transform = CASES[name], build(name)
    generator = torch.Generator().manual_seed(1)
    if case.sampled_given_context:
        context = case.context(transform, 16, generator)
        with torch.no_grad():
            return Entry(transform, transform.sample(16, context=context, generator=generator),
                         context, case)
    x = case.inputs(transform, 16, generator)
    context = case.context(transform, 16, generator) if case.context else None
    return Entry(transform, x, context, case)


# Module scope: each entry is built and sampled once for all the properties (the tests
# leave it unchanged).
@pytest.fixture(scope="module", params=sorted(CASES))
def entry(request) -> Entry:
    return _entry(request.param)


@pytest.fixture(scope="module",
                params=sorted(name for name, case in CASES.items() if case.context))
def conditional(request) -> Entry:
    return _entry(request.param)


def test_inverse_of_forward_is_identity(entry):
    z, _ = entry.transform(entry.x, entry.context)
    assert torch.allclose(entry.transform.inverse(z, entry.context), entry.x, atol=1e-5)


def test_forward_of_inverse_is_identity(entry):
    """z in (0.01, 0.99): inside the domain of every inverse (a CDF's, a sigmoid's)."""
    transform, context = entry.transform, entry.context
    z_shape = entry.case.z_shape or entry.x.shape[1:]
    z = unit_interval(*z_shape)(transform, len(entry.x), torch.Generator().manual_seed(2))
    assert torch.allclose(transform(transform.inverse(z, context), context)[0], z, atol=1e-6)


def _jacobians(transform: nn.Module, x: Tensor, context: Tensor | None) -> Tensor:
    """dz/dx of every example, [B, D, D], by reverse mode: one pass per output dimension
    seeds that output of every example at once (no example's z depends on another's x)."""
    x = x.clone().requires_grad_()
    z = transform(x, context)[0].flatten(1)
    rows = [torch.autograd.grad(z[:, dim].sum(), x, retain_graph=True)[0].flatten(1)
            for dim in range(z.shape[1])]
    return torch.stack(rows, dim=1)


def test_log_det_matches_autograd_jacobian(entry):
    x, context = entry.first(5)
    _, log_det = entry.transform(x, context)
    expected = torch.linalg.slogdet(_jacobians(entry.transform, x, context)).logabsdet
    assert torch.allclose(log_det, expected, atol=1e-8), (log_det, expected)


def test_a_volume_preserving_flag_means_a_zero_log_det(entry):
    """``Inverse`` skips its second pass for transforms flagged volume preserving: the flag
    must only be on maps whose log|det| is 0."""
    x, context = entry.first(3)
    if getattr(entry.transform, "volume_preserving", False):
        assert torch.equal(entry.transform(x, context)[1], torch.zeros(3, dtype=x.dtype))


def test_log_det_has_one_value_per_example(entry):
    x, context = entry.first(7)
    z, log_det = entry.transform(x, context)
    assert z.shape == (7, *(entry.case.z_shape or x.shape[1:])) and log_det.shape == (7,)


def test_the_context_reaches_the_transform(conditional):
    """Another context gives another z, and the round trip holds under each: the context is
    passed through (a composition, a multi-scale half) to the parts that use it."""
    transform, x = conditional.transform, conditional.x
    other = conditional.case.context(transform, len(x), torch.Generator().manual_seed(3))
    z, log_det = transform(x, conditional.context)
    z_other, log_det_other = transform(x, other)
    assert not torch.allclose(z, z_other) and not torch.allclose(log_det, log_det_other)
    assert torch.allclose(transform.inverse(z_other, other), x, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_samples_have_event_shape_and_are_finite(name):
    flow = build(name)
    samples = flow.sample(32, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (32, *flow.event_shape)
    assert torch.isfinite(samples).all()


def _bijections_in_flowtrain() -> set[type]:
    """Every concrete Bijection subclass defined in flowtrain's flows, likelihood and
    dequantization modules."""
    flows = pkgutil.iter_modules(flowtrain.flows.__path__, "flowtrain.flows.")
    for name in ["flowtrain.likelihood", "flowtrain.dequant", *(flow.name for flow in flows)]:
        importlib.import_module(name)
    found, unvisited = set(), [Bijection]
    while unvisited:
        for subclass in unvisited.pop().__subclasses__():
            unvisited.append(subclass)
            if subclass.__module__.startswith("flowtrain.") and not inspect.isabstract(subclass):
                found.add(subclass)
    return found


def test_every_bijection_in_flowtrain_is_in_the_list():
    listed = {type(CASES[name].build()) for name in CASES}
    missing = sorted(f"{cls.__module__}.{cls.__qualname__}"
                     for cls in _bijections_in_flowtrain() - listed)
    assert not missing, f"add an entry to CASES in tests/test_bijections.py for {missing}"



def test_a_conditional_model_scores_and_samples_given_its_context():
    """log_prob(x, context), sample(n, context=...) and the loss all pass the context on:
    a class-conditional flow needs no second interface."""
    flow = build("flow_model-conditional")
    context = normal(2, 4, 4)(flow, 8, torch.Generator().manual_seed(4))
    x = flow.sample(8, context=context, generator=torch.Generator().manual_seed(5))
    z, log_det = flow(x, context)
    drawn = flow.base.sample(8, like=x, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(z, drawn, atol=1e-6)  # sample inverted under the same context
    log_prob = flow.log_prob(x, context)
    assert torch.allclose(log_prob, flow.base.log_prob(z) + log_det)
    assert not torch.allclose(log_prob, flow.log_prob(x, context.flip(0)))
    preprocessing = Preprocessing(NoDequantization(), Identity()).double()
    assert torch.allclose(negative_log_likelihood(flow, preprocessing, x, context=context),
                          -log_prob)


@pytest.mark.parametrize("name", sorted(CONDITIONAL_MODELS))
def test_a_class_conditional_model_needs_its_labels_and_samples_each_class(name):
    """Samples of a class, scored under that class, score higher on average than under the
    others' labels (the class reaches the density), and no labels is an error, not an
    unconditional pass."""
    flow = build(name)
    x = flow.sample(6, context=torch.zeros(6, dtype=torch.long),
                    generator=torch.Generator().manual_seed(2))
    assert x.shape == (6, *flow.event_shape) and torch.isfinite(x).all()
    own = flow.log_prob(x, torch.zeros(6, dtype=torch.long))
    others = flow.log_prob(x, torch.ones(6, dtype=torch.long))
    assert not torch.allclose(own, others)
    with pytest.raises(ValueError, match="class-conditional"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match="int64 of shape"):
        flow.log_prob(x, torch.zeros(6, 1, dtype=torch.long))


@pytest.mark.parametrize("model", [RealNVP, Glow, PixelCNNFlow, FlowPlusPlus, TarFlow])
def test_conditional_needs_classes_and_the_unconditional_model_holds_no_class_weights(model):
    from flowtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="labelled data"):
        model((1, 4, 4), conditional=True, n_classes=0)
    unconditional = model((1, 4, 4), n_classes=10)  # classes given, conditional=false
    assert unconditional.n_classes == 0
    assert not [key for key in unconditional.state_dict() if "class" in key]
    conditional = model((1, 4, 4), conditional=True, n_classes=10)
    assert conditional.n_classes == 10 and any("class" in key
                                               for key in conditional.state_dict())
