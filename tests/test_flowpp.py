"""Flow++: what the shared bijection list (tests/test_bijections.py) does not cover: the
mixture-logistic coupling's logit CDF and its inverse at sharp components, attention over
all positions, dropout, the released data-dependent initialization, the released parameter
counts, and the CLI end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from conftest import REPO, read_metrics, run_cli, sample_four, whole_and_resumed
from hydra.utils import instantiate

import flowtrain
from flowtrain.dequant import VariationalDequantization
from flowtrain.errors import ConfigError
from flowtrain.flows.actnorm import ActNorm
from flowtrain.flows.flowpp import RELEASED_MIN_LOG_SCALE, FlowPlusPlus, MixLogisticCoupling
from flowtrain.flows.flowpp_network import DataInitConv2d, FlowppNetwork
from flowtrain.flows.mixture import ScalarMixture
from flowtrain.flows.reshape import ColumnHalves, SpaceToDepth
from flowtrain.training.runtime import autocast


def _mixture(log_scale: float) -> ScalarMixture:
    """Three logistic components, one of them of scale exp(log_scale), in float64."""
    return ScalarMixture(torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64),
                         torch.tensor([-2.0, 0.1, 1.5], dtype=torch.float64),
                         torch.tensor([0.2, log_scale, -0.5], dtype=torch.float64),
                         "logistic")


def test_log_cdf_and_survival_are_exact_where_the_cdf_rounds_to_one():
    mixture = _mixture(-1.0)
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    log_cdf, log_sf, log_pdf = mixture.log_cdf_sf_and_pdf(x)
    assert torch.allclose(log_cdf.exp(), mixture.cdf(x))
    assert torch.allclose(log_sf.exp(), 1 - mixture.cdf(x))
    assert torch.allclose(log_pdf, mixture.log_pdf(x))
    # x = 60: F(x) is 1 in float64, yet logit F keeps growing (as x over the widest scale)
    far = torch.tensor([60.0, 80.0], dtype=torch.float64)
    log_cdf, log_sf, _ = mixture.log_cdf_sf_and_pdf(far)
    logit = log_cdf - log_sf
    assert torch.isfinite(logit).all() and logit[1] > logit[0] > 30


@pytest.mark.parametrize("log_scale", [0.0, RELEASED_MIN_LOG_SCALE])
def test_the_logit_cdf_inverts_by_bisection_even_at_sharp_components(log_scale):
    """A component of scale e^-7 (the released floor) puts most of a unit of logit within
    0.001 of its mean: the bisection must still land there, and far into either tail."""
    mixture = _mixture(log_scale)
    y = torch.tensor([-40.0, -3.0, -0.2, 0.0, 0.1, 2.5, 40.0], dtype=torch.float64)
    x = mixture.inverse_logit_cdf(y, tol=1e-9)
    log_cdf, log_sf, _ = mixture.log_cdf_sf_and_pdf(x)
    assert torch.allclose(log_cdf - log_sf, y, atol=1e-6)


def test_a_sharp_coupling_round_trips():
    """The coupling with every component at the released floor, scale e^-7: values within
    a few such scales of a component come back to 1e-6 (far between components the CDF is
    flat to float64 precision, and no bisection can tell points apart there)."""
    torch.manual_seed(0)
    coupling = MixLogisticCoupling(2, (2, 4), n_filters=4, n_blocks=1, n_components=3,
                                   heads=2, dropout=0.0, init="identity").double().eval()
    with torch.no_grad():  # the output bias alone sets the parameters: a = 0.3, b = -0.2
        bias = coupling.network.output.bias
        bias[:2] = torch.tensor([0.3, -0.2], dtype=torch.float64)
        bias[2 + 3:2 + 2 * 3] = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
        bias[2 + 2 * 3:] = -20.0  # the component log-scales, clamped to -7
    generator = torch.Generator().manual_seed(1)
    near = torch.randint(-1, 2, (3, 1, 2, 4), generator=generator).double()
    x = torch.cat([torch.randn(3, 1, 2, 4, generator=generator, dtype=torch.float64),
                   near + 0.003 * torch.randn(3, 1, 2, 4, generator=generator,
                                              dtype=torch.float64)], dim=1)
    z, log_det = coupling(x)
    assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
    assert torch.allclose(coupling.inverse(z), x, atol=1e-6)


def test_the_splits_order_values_as_released():
    """Exact orders, which a round trip cannot tell apart: TensorFlow's space_to_depth puts
    the top row of each 2x2 patch first, and the released "checkerboard" pairs columns."""
    image = torch.arange(8.0).view(1, 2, 2, 2)  # channels 0..3 and 4..7
    squeezed, _ = SpaceToDepth()(image)
    assert squeezed.flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    row = torch.arange(4.0).view(1, 1, 1, 4)
    halves, _ = ColumnHalves()(row)
    assert halves.view(2, 2).tolist() == [[0, 2], [1, 3]]


def test_per_position_actnorm_standardizes_every_element_on_its_first_batch():
    torch.manual_seed(0)
    actnorm = ActNorm(2, size=(3, 4))
    x = torch.randn(64, 2, 3, 4) * torch.rand(1, 2, 3, 4) * 5 + torch.randn(1, 2, 3, 4)
    z, log_det = actnorm(x)
    assert torch.allclose(z.mean(dim=0), torch.zeros(2, 3, 4), atol=1e-5)
    assert torch.allclose(z.std(dim=0, unbiased=False), torch.ones(2, 3, 4), atol=1e-4)
    expected = -torch.log(x.std(dim=0, unbiased=False)).sum()
    assert torch.allclose(log_det, expected.expand(64), atol=1e-3)


def test_the_dequantizers_dropout_is_on_in_training_only():
    torch.manual_seed(0)
    dequantizer = VariationalDequantization(17, event_shape=(1, 4, 4), n_couplings=1,
                                            n_filters=4, n_blocks=1, context_channels=2,
                                            coupling="mixture_logistic", n_components=2,
                                            heads=2, dropout=0.5)
    for parameter in dequantizer.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    eps, x = torch.randn(3, 1, 4, 4), torch.randint(0, 17, (3, 1, 4, 4)).float()
    dequantizer.train()
    assert not torch.equal(dequantizer.transform_noise(eps, x)[0],
                           dequantizer.transform_noise(eps, x)[0])
    dequantizer.eval()
    assert torch.equal(dequantizer.transform_noise(eps, x)[0],
                       dequantizer.transform_noise(eps, x)[0])


def test_attention_lets_every_position_see_every_other():
    """One block: convolutions alone reach 3 pixels; the far corner of an 8x8 map still
    changes the output at the first pixel, through attention with no mask."""
    torch.manual_seed(0)
    network = FlowppNetwork(1, 2, (8, 8), n_filters=4, n_blocks=1, heads=2, dropout=0.0,
                            init="identity")
    torch.nn.init.normal_(network.output.weight, std=0.1)
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    network(x)[0, :, 0, 0].sum().backward()
    assert (x.grad[0, 0] != 0).all()


def test_dropout_is_on_in_training_and_off_in_evaluation():
    torch.manual_seed(0)
    flow = FlowPlusPlus((1, 4, 4), n_filters=4, n_blocks=1, n_components=2, heads=2,
                        dropout=0.5, column_in=1, channelwise=1, column_out=1)
    for parameter in flow.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    x = torch.randn(4, 1, 4, 4)
    flow.train()
    assert not torch.equal(flow.log_prob(x), flow.log_prob(x))
    flow.eval()
    assert torch.equal(flow.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("shape, kwargs, message", [
    ((1, 4, 6), {}, "width divisible by 4"),
    ((1, 3, 4), {}, "height must be even"),
    ((1, 4, 4), {"n_filters": 6, "heads": 4}, "divisible by model.heads"),
    ((1, 4, 4), {"n_blocks": 0}, "n_blocks.*at least 1"),
    ((1, 4, 4), {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ((2,), {}, "takes images"),
])
def test_shapes_flowpp_cannot_take_name_the_constraint(shape, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FlowPlusPlus(shape, **kwargs)


def test_the_mixture_dequantizer_checks_its_network_options():
    with pytest.raises(ConfigError, match="dequant.n_filters=6 must be divisible"):
        VariationalDequantization(17, event_shape=(1, 4, 4), n_filters=6, heads=4,
                                  coupling="mixture_logistic")


def test_a_released_layer_starts_as_the_released_code_computes_it():
    """flowpp's flows.py conv2d under VarConfig(init=True): W ~ N(0, 0.05^2), then
    W * s / sqrt(v + 1e-8) and b = -m * s / sqrt(v + 1e-8) from the per-channel moments of
    conv(x, W) on the first batch, computed here independently in float64."""
    torch.manual_seed(0)
    assert DataInitConv2d(64, 64, 3).weight.std().item() == pytest.approx(0.05, rel=0.02)
    conv = DataInitConv2d(3, 5, 3, init_scale=0.1).double()
    start = conv.weight.detach().clone()
    x = torch.randn(16, 3, 6, 6, dtype=torch.float64) * 3 + 1
    y = torch.nn.functional.conv2d(x, start, padding=1)
    scale = 0.1 / (y.var(dim=(0, 2, 3), unbiased=False) + 1e-8).sqrt()
    out = conv(x)
    assert torch.allclose(conv.weight, start * scale.view(-1, 1, 1, 1), rtol=1e-12)
    assert torch.allclose(conv.bias, -y.mean(dim=(0, 2, 3)) * scale, rtol=1e-12)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(5, dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(out.std(dim=(0, 2, 3), unbiased=False),
                          torch.full((5,), 0.1, dtype=torch.float64), rtol=1e-6)
    initialized = conv.weight.detach().clone()
    conv(x * 5)  # only the first batch
    assert torch.equal(conv.weight, initialized)


def test_a_released_flowpp_initializes_every_layer_once_and_stays_invertible():
    torch.manual_seed(0)
    options = {"n_filters": 8, "n_blocks": 1, "n_components": 3, "heads": 2,
               "column_in": 1, "channelwise": 1, "column_out": 1, "init": "released"}
    flow = FlowPlusPlus((1, 8, 8), **options).double()
    layers = [module for module in flow.modules() if isinstance(module, DataInitConv2d)]
    assert len(layers) == 3 * 6  # per coupling: in, 2 in the gated conv, 2 in attention, out
    outputs = []
    for layer in layers:  # the last layer of each network: its outputs at 0.1
        if layer.init_scale == 0.1 and layer.kernel_size == (3, 3):
            layer.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    x = torch.rand(32, 1, 8, 8, dtype=torch.float64)
    flow.train()
    flow.log_prob(x)
    assert all(bool(layer.initialized) for layer in layers) and len(outputs) == 3
    for output in outputs:
        assert torch.allclose(output.std(dim=(0, 2, 3), unbiased=False),
                              torch.full((output.shape[1],), 0.1, dtype=torch.float64),
                              rtol=1e-4)
    reloaded = FlowPlusPlus((1, 8, 8), **options).double()
    reloaded.load_state_dict(flow.state_dict())
    reloaded.train()
    reloaded.log_prob(x * 0.5)  # a loaded model keeps its weights
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(),
                                                 flow.state_dict().values(), strict=True))
    flow.eval()
    z, _ = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-5)  # the bisection's tolerance


def test_the_released_initialization_is_the_same_when_the_first_step_runs_in_bf16():
    """Autocast keeps bf16 copies of the weights it cast: a layer rescaled inside it would
    answer its first batch with the old weights and misinform every layer after it."""
    def initialized(precision: str) -> FlowPlusPlus:
        torch.manual_seed(0)
        flow = FlowPlusPlus((3, 4, 4), n_filters=8, n_blocks=1, n_components=3, heads=2,
                            column_in=1, channelwise=1, column_out=1)
        with autocast(torch.device("cpu"), precision):
            flow.log_prob(torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)))
        return flow

    in_bf16, in_fp32 = initialized("bf16"), initialized("fp32")
    for (name, value), reference in zip(in_bf16.named_parameters(), in_fp32.parameters(),
                                        strict=True):
        assert torch.allclose(value, reference, rtol=0.05, atol=1e-3), name  # bf16 noise


def test_a_class_path_that_starts_at_zero_keeps_its_weights():
    """A conditional Flow++'s class embedding starts at zero, so the layer that reads it
    sees no variance on the first batch: rescaled anyway it would grow 10,000-fold."""
    torch.manual_seed(0)
    flow = FlowPlusPlus((1, 4, 4), n_filters=4, n_blocks=1, n_components=2, heads=2,
                        column_in=1, channelwise=0, column_out=0, conditional=True,
                        n_classes=3)
    from_context = [module.from_context for module in flow.modules()
                    if getattr(module, "from_context", None) is not None]
    before = [layer.weight.detach().clone() for layer in from_context]
    flow.log_prob(torch.rand(16, 1, 4, 4), torch.arange(16) % 3)
    assert from_context and all(bool(layer.initialized) for layer in from_context)
    for layer, weight in zip(from_context, before, strict=True):
        assert torch.equal(layer.weight, weight) and torch.equal(layer.bias,
                                                                 torch.zeros_like(layer.bias))


def test_the_released_initialization_is_for_the_mixture_dequantizer_only():
    with pytest.raises(ConfigError, match="dequant.init=released.*mixture_logistic"):
        VariationalDequantization(17, event_shape=(1, 4, 4), init="released")


# The counts the released scripts state in their docstrings (flows/run_cifar.py:
# "Params: 31,443,440"; flows/ablations/abl_nodequant.py: "Params: 32,324,408").
RELEASED = {"flowpp_cifar10": 31_443_440, "flowpp_cifar10_uniform": 32_324_408}


@pytest.mark.parametrize("preset", sorted(RELEASED))
def test_the_presets_have_the_released_parameter_counts(preset, tmp_path):
    """Model and dequantizer together, as the released scripts count them."""
    cfg = yaml.safe_load(run_cli(f"experiment={preset}", "--cfg", "job", cwd=tmp_path).stdout)
    model = instantiate(cfg["model"], event_shape=(3, 32, 32))
    dequantizer = instantiate(cfg["dequant"], levels=256, event_shape=(3, 32, 32))
    total = sum(p.numel() for module in (model, dequantizer) for p in module.parameters())
    assert total == RELEASED[preset]
    if preset == "flowpp_cifar10":  # the dequantizer's share, stated in its own file
        n_dequantizer = sum(p.numel() for p in dequantizer.parameters())
        assert n_dequantizer == 3_466_976
        assert f"{n_dequantizer:,} parameters" in (REPO / "conf" / "dequant" / "flowpp.yaml"
                                                   ).read_text()
    assert f"{total:,} parameters" in (REPO / "conf" / "experiment" / f"{preset}.yaml"
                                       ).read_text()


TINY_FLOWPP = ["model=flowpp", "model.n_filters=4", "model.n_blocks=1",
               "model.n_components=2", "model.heads=2", "model.dropout=0.1",
               "model.column_in=1", "model.channelwise=1", "model.column_out=1",
               "dequant=variational", "dequant.coupling=mixture_logistic",
               "dequant.n_couplings=1", "dequant.n_filters=4", "dequant.n_blocks=1",
               "dequant.n_components=2", "dequant.heads=2", "dequant.context_channels=2",
               "dequant.dropout=0.1", "dequant.eval_samples=2", "data=digits",
               "train.steps=6", "train.batch_size=4", "train.eval_every=3",
               "train.sample_every=6", "train.checkpoint_every=3", "train.log_every=3",
               "train.eval_batch_size=64", "train.n_samples=4", "train.grad_clip=1.0",
               "train.ema_decay=0.9", "optim.schedule=constant", "device=cpu",
               "model.init=released", "dequant.init=released"]


def test_flowpp_trains_with_its_dequantizer_and_resumes_exactly(tmp_path):
    """Dropout in both networks draws from the training RNG, the EMA weights are what
    evaluation uses, and both networks start from the released data-dependent
    initialization (once, not again on resuming): a resumed run must still give the very
    same numbers."""
    whole, split = whole_and_resumed(tmp_path, TINY_FLOWPP, stop_at=3)
    assert whole["dequant_params"] > 0 and whole["eval_samples"] == 2
    assert math.isfinite(whole["test_bpd"]) and whole["test_bpd_iw"] <= whole["test_bpd"] + 1e-9
    assert split["steps"] == whole["steps"] == 6
    for key in ("test_bpd", "test_bpd_iw", "best_val_bpd"):
        assert split[key] == whole[key], key
    run_dir = tmp_path / "whole"
    log = (run_dir / "flowtrain.log").read_text()
    assert f"{whole['params']:,} parameters ({whole['params'] + whole['dequant_params']:,} " \
           f"with the dequantizer)" in log
    samples = sample_four(run_dir / "checkpoints" / "best.pt", tmp_path)
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 16
    assert read_metrics(run_dir)["params"] == sum(
        p.numel() for p in FlowPlusPlus((1, 8, 8), n_filters=4, n_blocks=1, n_components=2,
                                        heads=2, column_in=1, channelwise=1,
                                        column_out=1).parameters())


def test_a_checkpoint_from_before_model_init_is_rebuilt_as_it_was_trained(tmp_path):
    """A Flow++ checkpoint written before model.init (and dequant.init) has neither key:
    it meant identity. task=eval rebuilds it so, not with today's released default (whose
    layers carry an extra buffer and would not take its weights), and reproduces the run."""
    run_dir = tmp_path / "run"
    run_cli(*TINY_FLOWPP, "model.init=identity", "dequant.init=identity", "train.steps=2",
            "train.eval_every=2", "train.sample_every=2", "train.checkpoint_every=2",
            f"hydra.run.dir={run_dir}", cwd=tmp_path)
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    del saved["config"]["model"]["init"], saved["config"]["dequant"]["init"]
    old = tmp_path / "old.pt"
    torch.save(saved, old)
    run_cli("task=eval", f"ckpt={old}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["test_bpd"] == pytest.approx(read_metrics(run_dir)["test_bpd"], abs=1e-6)
    assert flowtrain.load(old).sample(2).shape == (2, 1, 8, 8)  # the Python API too
    # naming the value it predates (as a refused resume suggests) is no contradiction
    run_cli("task=eval", f"ckpt={old}", "model.init=identity",
            f"hydra.run.dir={tmp_path / 'eval-named'}", cwd=tmp_path)
