"""TarFlow: what the shared bijection list (tests/test_bijections.py) does not cover: the
autoregressive structure over tokens in both orders, the key/value cache against the plain
inverse, the shapes it refuses, the one-epoch warm-up of its recipe, the preset, and the CLI
end to end with uniform and Gaussian noise."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import read_metrics, read_scalars, run_cli, sample_four, whole_and_resumed
from hydra.utils import instantiate
from omegaconf import OmegaConf

import flowtrain
from flowtrain.errors import ConfigError
from flowtrain.flows.tarflow import Patchify, TarFlow, TransformerAutoregressiveBlock
from flowtrain.flows.transformer import CausalTransformer
from flowtrain.likelihood import Preprocessing
from flowtrain.training.optim import build_scheduler, warmup_steps

TOKENS, TOKEN_DIM = 5, 3


def _perturbed(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Off the initial weights (whose zero output projection makes every block the
    identity), gently: TarFlow's log-scales are unbounded, as released."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module.double().eval()


def _token_jacobian(transform, x: torch.Tensor) -> torch.Tensor:
    """dz/dx of one example as [T, D, T, D]: output token, value, input token, value."""
    jacobian = torch.autograd.functional.jacobian(lambda t: transform(t)[0], x)
    return jacobian.reshape(*x.shape[1:], *x.shape[1:])


@pytest.mark.parametrize("flip", [False, True])
def test_a_block_is_autoregressive_in_its_token_order(flip):
    """Output token i depends on input token i (elementwise) and on the tokens before it in
    the block's order, never after; the first in that order passes unchanged."""
    torch.manual_seed(0)
    block = _perturbed(TransformerAutoregressiveBlock(TOKENS, TOKEN_DIM, width=8, n_layers=2,
                                                      head_dim=4, flip=flip))
    x = torch.randn(1, TOKENS, TOKEN_DIM, dtype=torch.float64)
    jacobian = _token_jacobian(block, x)
    order = list(reversed(range(TOKENS))) if flip else list(range(TOKENS))
    for rank_out, out in enumerate(order):
        for rank_in, into in enumerate(order):
            part = jacobian[out, :, into, :]
            if rank_in > rank_out:
                assert torch.equal(part, torch.zeros_like(part)), (out, into)
            elif rank_in < rank_out:
                assert part.abs().max() > 1e-6, (out, into)
            else:  # z_i = (x_i - mu_i) exp(-alpha_i): diagonal, positive
                assert torch.equal(part, torch.diag(torch.diagonal(part))), out
                assert (torch.diagonal(part) > 0).all()
    first = order[0]
    assert torch.equal(jacobian[first, :, first, :], torch.eye(TOKEN_DIM, dtype=torch.float64))


def test_across_two_blocks_every_token_conditions_every_other():
    model = _perturbed(TarFlow((1, 4, 4), patch_size=2, width=8, blocks=2,
                               layers_per_block=1, head_dim=4))
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    patches = Patchify((1, 4, 4), 2)
    jacobian = torch.autograd.functional.jacobian(
        lambda image: patches(model(image)[0])[0], x)  # [1, T, D, 1, 1, 4, 4]
    jacobian = jacobian.reshape(4, 4, 1, 1, 4, 4)
    by_input_token = patches(jacobian.reshape(16, 1, 4, 4))[0].reshape(4, 4, 4, 4)
    assert (by_input_token.abs().amax(dim=(1, 3)) > 1e-6).all()  # [out token, in token]


def test_a_bound_keeps_every_log_scale_within_it():
    """Pushed far off its start, an unbounded block's log-scales leave (-1, 1); bounded by
    1 they stay inside, and the log-det is -sum alpha of what was applied."""
    x = torch.randn(4, TOKENS, TOKEN_DIM, dtype=torch.float64)
    for bound in (0.0, 1.0):
        torch.manual_seed(0)
        block = _perturbed(TransformerAutoregressiveBlock(
            TOKENS, TOKEN_DIM, width=8, n_layers=1, head_dim=4, max_log_scale=bound), 0.5)
        z, log_det = block(x)
        log_scale, shift = block._affine(block.conditioner(x[:, :-1]), x)
        assert torch.allclose(z[:, 1:], (x[:, 1:] - shift) * torch.exp(-log_scale))
        assert torch.allclose(log_det, -log_scale.flatten(1).sum(dim=1))
        assert (log_scale.abs().max() < 1) == (bound == 1.0)


def _tiny_model(kv_cache: bool) -> TarFlow:
    torch.manual_seed(0)
    return _perturbed(TarFlow((2, 4, 6), patch_size=2, width=8, blocks=3, layers_per_block=2,
                              head_dim=4, kv_cache=kv_cache))


def test_the_cached_inverse_equals_the_uncached_one_and_reads_no_prefix(monkeypatch):
    cached, uncached = _tiny_model(True), _tiny_model(False)
    z = torch.randn(7, 2, 4, 6, dtype=torch.float64)
    expected = uncached.inverse(z)
    passes = []
    original = CausalTransformer.forward
    monkeypatch.setattr(CausalTransformer, "forward",
                        lambda self, *args, **kw: passes.append(1) or original(self, *args,
                                                                                **kw))
    assert torch.allclose(cached.inverse(z), expected, atol=1e-12)
    assert passes == []  # one cached step per token, never a pass over the prefix
    samples = cached.sample(4, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(samples, uncached.sample(4, generator=torch.Generator().manual_seed(3)),
                          atol=1e-12)
    assert torch.allclose(cached(expected)[0], z, atol=1e-10)
    cached.kv_cache = False
    assert not cached.kv_cache and uncached.kv_cache is False


@pytest.mark.parametrize(("shape", "options", "message"), [
    ((1, 8, 8), {"patch_size": 3}, "must divide the image's height and width"),
    ((1, 8, 6), {"patch_size": 4}, "must divide"),
    ((1, 4, 4), {"patch_size": 4}, "at least two tokens"),
    ((1, 8, 8), {"width": 48, "head_dim": 32}, "divisible by model.head_dim"),
    ((1, 8, 8), {"blocks": 0, "head_dim": 0}, "model.blocks=0, model.head_dim=0: "),
    ((1, 8, 8), {"max_log_scale": -1.0}, "model.max_log_scale must be 0"),
    ((16,), {}, "model=tarflow"),
])
def test_shapes_tarflow_cannot_take_name_the_constraint(shape, options, message):
    with pytest.raises(ConfigError, match=message):
        TarFlow(shape, **options)


def test_the_warm_up_can_last_whole_epochs():
    """apple/ml-tarflow train.py warms up over len(data_loader) steps: one epoch."""
    config = OmegaConf.create({"warmup_steps": 100, "warmup_epochs": 1.5,
                               "schedule": "cosine", "min_lr_ratio": 0.01})
    assert warmup_steps(config, steps_per_epoch=40) == 60
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=1.0)
    scheduler = build_scheduler(config, optimizer, total_steps=200, steps_per_epoch=40)
    factors = [scheduler.lr_lambdas[0](step) for step in (0, 59, 60, 199)]
    assert factors[:3] == [1 / 60, 1.0, 1.0] and math.isclose(factors[3], 0.01, abs_tol=1e-3)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        warmup_steps(OmegaConf.create({"warmup_steps": 1, "warmup_epochs": -1}), 10)
    config.warmup_epochs = None
    assert warmup_steps(config, steps_per_epoch=40) == 100


def test_the_imagenet64_preset_is_the_released_model(tmp_path):
    """460,142,784 parameters: the count of apple/ml-tarflow's Model with the README's
    settings (scripts/tarflow_released_check.py builds both)."""
    cfg = yaml.safe_load(run_cli("experiment=tarflow_imagenet64", "--cfg", "job",
                                 cwd=tmp_path).stdout)
    with torch.device("meta"):  # counted, not allocated
        model = instantiate(cfg["model"], event_shape=(3, 64, 64))
    assert sum(p.numel() for p in model.parameters()) == 460_142_784
    assert cfg["optim"]["betas"] == [0.9, 0.95] and cfg["optim"]["warmup_epochs"] == 1
    assert cfg["dequant"]["range"] == [-1.0, 1.0] and cfg["dequant"]["logit_alpha"] == 0.0
    assert cfg["data"]["format"] == "folders" and cfg["train"]["batch_size"] == 256


TINY_TARFLOW = ["model=tarflow", "model.width=16", "model.blocks=2", "model.layers_per_block=1",
                "model.head_dim=8", "data=digits", "optim=adamw", "optim.warmup_epochs=1",
                "train.steps=6", "train.batch_size=8", "train.eval_every=3",
                "train.sample_every=6", "train.checkpoint_every=3", "train.log_every=3",
                "train.eval_batch_size=128", "train.n_samples=4", "train.grad_clip=1.0",
                "train.ema_decay=0.9", "device=cpu"]


def test_tarflow_trains_samples_and_resumes_exactly(tmp_path):
    whole, split = whole_and_resumed(tmp_path, TINY_TARFLOW, stop_at=3)
    assert split["steps"] == whole["steps"] == 6 and math.isfinite(whole["test_bpd"])
    for key in ("test_bpd", "best_val_bpd", "train_bpd"):
        assert split[key] == whole[key], key
    run_dir = tmp_path / "whole"
    assert whole["params"] == sum(p.numel() for p in TarFlow(
        (1, 8, 8), width=16, blocks=2, layers_per_block=1, head_dim=8).parameters())
    lr = read_scalars(run_dir)["lr"]
    # linear over one epoch: 1350 training digits are 168 full batches of 8
    peak = OmegaConf.load(run_dir / ".hydra" / "config.yaml").optim.lr
    assert peak == 3e-3  # conf/data_model/digits_tarflow.yaml
    assert [step for step, _ in lr] == [3, 6]
    for step, value in lr:
        assert math.isclose(value, peak * (step + 1) / (1350 // 8), rel_tol=1e-5)
    samples = sample_four(run_dir / "checkpoints" / "best.pt", tmp_path)
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 16


def test_gaussian_noise_trains_and_samples_are_denoised(tmp_path, monkeypatch):
    run_dir = tmp_path / "gaussian"
    run_cli(*TINY_TARFLOW, "dequant=gaussian", "dequant.sigma=0.1",
            f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "not the discrete likelihood" in (run_dir / "flowtrain.log").read_text()
    assert math.isfinite(read_metrics(run_dir)["test_bpd"])
    flow = flowtrain.load(run_dir / "checkpoints" / "last.pt")
    assert flow.preprocessing.dequantizer.denoise_sigma == 0.1
    denoised = flow.sample(6, seed=0)
    assert denoised.shape == (6, 1, 8, 8) and denoised.dtype == torch.uint8
    flow.preprocessing.dequantizer.denoise_sigma = None
    assert not torch.equal(flow.sample(6, seed=0), denoised)  # the same draws, not denoised
    steps = []
    original = Preprocessing.denoise
    monkeypatch.setattr(Preprocessing, "denoise",
                        lambda self, model, y, sigma, context=None: steps.append(
                            (len(y), sigma)) or original(self, model, y, sigma, context))
    samples = sample_four(run_dir / "checkpoints" / "last.pt", tmp_path)
    assert steps == [(4, 0.1)] and samples.max() <= 16


def test_a_patch_that_does_not_fit_is_refused_before_training(tmp_path):
    result = run_cli("model=tarflow", "model.patch_size=3", f"hydra.run.dir={tmp_path}",
                     cwd=tmp_path, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "model.patch_size=3 must divide the image's height and width (8x8)" in output


# --- class-conditional: dropped labels and classifier-free guidance ----------------------

def _conditional_block(length: int = TOKENS) -> TransformerAutoregressiveBlock:
    return _perturbed(TransformerAutoregressiveBlock(length, TOKEN_DIM, width=8, n_layers=2,
                                                     head_dim=4, n_classes=3))


def test_no_class_reads_the_mean_class_embedding():
    """transformer_flow.py MetaBlock: a dropped label (-1) adds class_embed.mean(dim=0)."""
    from flowtrain.flows.conditioning import NO_CLASS

    embedding = _conditional_block().conditioner.class_embed
    read = embedding.or_mean(torch.tensor([2, NO_CLASS, 0]), 3)
    assert torch.equal(read[0], embedding.weight[2]) and torch.equal(read[2], embedding.weight[0])
    assert torch.allclose(read[1], embedding.weight.mean(dim=0))
    with pytest.raises(ValueError, match="int64"):
        embedding.or_mean(torch.tensor([0.0, 1.0, 2.0]), 3)


def test_training_drops_labels_and_evaluation_keeps_them():
    from flowtrain.flows.conditioning import NO_CLASS

    torch.manual_seed(0)
    flow = _perturbed(TarFlow((1, 4, 4), width=8, blocks=2, layers_per_block=1, head_dim=4,
                              conditional=True, n_classes=3, drop_label=0.999999))
    x, labels = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.arange(6) % 3
    flow.eval()
    kept, none = flow.log_prob(x, labels), flow.log_prob(x, torch.full_like(labels, NO_CLASS))
    assert not torch.allclose(kept, none)
    flow.train()
    assert torch.equal(flow.log_prob(x, labels), none)  # every label dropped
    for wrong, options in ((1.0, {"conditional": True, "n_classes": 3}), (0.1, {})):
        with pytest.raises(ConfigError, match="model.drop_label"):
            TarFlow((1, 4, 4), drop_label=wrong, **options)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_guidance_pushes_each_step_away_from_the_unconditional_one(kv_cache):
    """Each step's output o becomes o + g (o - o_uncond) (MetaBlock.reverse with
    guide_what='ab'), with or without the cache; annealed, g = i / (T - 1) * weight at
    token i (evaluate_fid.py); weight 0 is the plain inverse."""
    from flowtrain.flows.conditioning import NO_CLASS
    from flowtrain.flows.tarflow import Guidance

    block = _conditional_block(length=3)
    block.kv_cache = kv_cache
    z, labels = torch.randn(4, 3, TOKEN_DIM, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    plain = block.inverse(z, labels)
    for annealed, weights in ((False, (2.5, 2.5)), (True, (1.25, 2.5))):
        block.guidance = Guidance(2.5, annealed)
        steered = block.inverse(z, labels)
        expected = [z[:, :1]]
        with torch.no_grad():
            for index, weight in enumerate(weights, start=1):
                prefix = torch.cat(expected, dim=1)
                given = block.conditioner(prefix, False, labels)[:, -1:]
                unconditional = block.conditioner(prefix, False,
                                                  torch.full_like(labels, NO_CLASS))[:, -1:]
                log_scale, shift = (given + weight * (given - unconditional)).chunk(2, dim=-1)
                expected.append(z[:, index:index + 1] * log_scale.exp() + shift)
        assert torch.allclose(steered, torch.cat(expected, dim=1)), annealed
        assert not torch.allclose(steered, plain)
    block.guidance = Guidance()
    assert torch.equal(block.inverse(z, labels), plain)


def test_guidance_is_refused_where_there_is_nothing_to_steer():
    from flowtrain.flows.realnvp import RealNVP
    from flowtrain.flows.tarflow import guided

    for model in (TarFlow((1, 4, 4)), RealNVP((1, 4, 4), n_filters=4, n_blocks=1)):
        with pytest.raises(ConfigError, match="class-conditional TarFlow"), guided(model, 2.0):
            pass
    conditional = TarFlow((1, 4, 4), conditional=True, n_classes=3)
    for weight in (-1.0, float("nan"), float("inf")):  # a weight it cannot use, first
        with pytest.raises(ConfigError, match="finite weight of at least 0"), \
                guided(conditional, weight):
            pass
    with guided(TarFlow((1, 4, 4)), 0.0):  # no guidance: any model
        pass
