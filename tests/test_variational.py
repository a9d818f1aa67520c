"""Variational dequantization: q(u | x) is a proper density on [0, 1)^D, its bound and the
importance-weighted estimate are ordered as they must be, and it trains with every image
model through the CLI. The noise transform's round trip and log-det against autograd are in
test_bijections.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import read_metrics, read_scalars, run_cli, whole_and_resumed
from test_glow import TINY_GLOW
from test_images import TINY_PIXELCNN, TINY_REALNVP

from flowtrain.data.base import FlowData
from flowtrain.dequant import VariationalDequantization
from flowtrain.errors import ConfigError
from flowtrain.flows.realnvp import RealNVP
from flowtrain.likelihood import Preprocessing, importance_weighted_nll, negative_log_likelihood

LEVELS = 17


def _dequantizer(shape=(1, 2, 2), perturb: bool = True) -> VariationalDequantization:
    torch.manual_seed(0)
    dequantizer = VariationalDequantization(LEVELS, 0.05, event_shape=shape, n_couplings=3,
                                            n_filters=6, n_blocks=1, context_channels=3)
    if perturb:  # off the identity that zero-initialized outputs start from
        with torch.no_grad():
            for parameter in dequantizer.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
    return dequantizer


def _levels(n: int, shape) -> torch.Tensor:
    return torch.randint(0, LEVELS, (n, *shape), generator=torch.Generator().manual_seed(1))


def test_at_initialization_q_is_the_logit_normal():
    """Zero-initialized coupling outputs make g the identity: u = sigmoid(eps), whose
    density is N(logit u) / (u (1 - u))."""
    dequantizer = _dequantizer(perturb=False).double()
    x = _levels(5, (1, 2, 2)).double()
    u, log_q = dequantizer.noise(x, torch.Generator().manual_seed(3))
    logits = torch.logit(u)
    expected = (-0.5 * logits.square() - 0.5 * math.log(2 * math.pi)
                - torch.log(u) - torch.log1p(-u)).flatten(1).sum(dim=1)
    assert torch.allclose(log_q, expected)


def test_noise_depends_on_the_data_and_restores_it():
    dequantizer = _dequantizer((1, 4, 4))
    x = _levels(8, (1, 4, 4))
    y, _ = dequantizer(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(dequantizer.restore(y), x.float())
    same_noise = torch.Generator().manual_seed(5)
    u_a, _ = dequantizer.noise(x.float(), same_noise.manual_seed(5))
    u_b, _ = dequantizer.noise((LEVELS - 1 - x).float(), same_noise.manual_seed(5))
    assert not torch.allclose(u_a, u_b)  # the same eps, other data: other u


def test_importance_weighted_estimate_never_exceeds_the_bound():
    shape = (1, 4, 4)
    data = FlowData(_levels(16, shape), _levels(4, shape), name="fake", levels=LEVELS)
    preprocessing = Preprocessing.for_data(_dequantizer(shape), data)
    torch.manual_seed(0)
    model = RealNVP(shape, n_filters=4, n_blocks=1)
    model(torch.randn(16, *shape))  # ActNorm's initialization
    model.eval()
    with torch.no_grad():
        estimate, bound = importance_weighted_nll(model, preprocessing, data.train, 8,
                                                  torch.Generator().manual_seed(6))
        assert (estimate <= bound + 1e-6).all() and (estimate < bound).any()
        single, _ = importance_weighted_nll(model, preprocessing, data.train, 1,
                                            torch.Generator().manual_seed(7))
        plain = negative_log_likelihood(model, preprocessing, data.train,
                                        torch.Generator().manual_seed(7))
    assert torch.allclose(single, plain)


def test_gradients_reach_the_encoder_and_every_coupling():
    shape = (1, 4, 4)
    dequantizer = _dequantizer(shape)
    y, log_det = dequantizer(_levels(8, shape))
    (y.square().sum() - log_det.sum()).backward()
    assert all(parameter.grad.abs().sum() > 0 for parameter in dequantizer.parameters())


def test_the_encoder_gives_features_from_the_start():
    dequantizer = _dequantizer((1, 4, 4), perturb=False)
    assert dequantizer.encoder(torch.rand(2, 1, 4, 4)).abs().sum() > 0


def test_variational_dequantization_refuses_what_it_cannot_take():
    with pytest.raises(ConfigError, match="dequant=variational needs discrete data"):
        VariationalDequantization(None, event_shape=(1, 4, 4))
    with pytest.raises(ConfigError, match="takes images"):
        VariationalDequantization(LEVELS, event_shape=(2,))
    with pytest.raises(ConfigError, match="eval_samples"):
        VariationalDequantization(LEVELS, event_shape=(1, 4, 4), eval_samples=0)


VARIATIONAL = ["dequant=variational", "dequant.n_couplings=2", "dequant.n_filters=6",
               "dequant.context_channels=2", "dequant.eval_samples=4", "data=digits"]


def _check_variational_run(run_dir):
    metrics = read_metrics(run_dir)
    assert metrics["dequant_params"] > 0 and metrics["eval_samples"] == 4
    assert np.isfinite(metrics["test_bpd"]) and metrics["test_bpd_iw"] <= metrics["test_bpd"]
    scalars = read_scalars(run_dir)
    assert scalars["test/bpd_iw"] == [(metrics["steps"], pytest.approx(metrics["test_bpd_iw"]))]


@pytest.mark.parametrize("model", ["glow", "pixelcnn_arflow"])  # realnvp: the resume test
def test_image_models_train_with_variational_dequantization(tmp_path, model):
    overrides = {"glow": TINY_GLOW, "pixelcnn_arflow": TINY_PIXELCNN}[model]
    run_cli(*overrides, *VARIATIONAL, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    _check_variational_run(tmp_path)


def test_a_resumed_variational_run_matches_an_uninterrupted_one(tmp_path):
    """RealNVP trains with the dequantizer, whose weights and optimizer state are in the
    checkpoint."""
    common = [*TINY_REALNVP, *VARIATIONAL, "optim.schedule=constant", "device=cpu"]
    whole, split = whole_and_resumed(tmp_path, common, stop_at=3)
    _check_variational_run(tmp_path / "whole")
    assert split["steps"] == whole["steps"] == 6
    assert split["test_nll"] == whole["test_nll"]
    assert split["test_nll_iw"] == whole["test_nll_iw"]
