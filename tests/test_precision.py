"""bf16 autocast and torch.compile: the same bits/dim as fp32 eager, within a stated
tolerance, and log-dets that never leave float32."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RUN, read_metrics, run_cli

from flowtrain.flows.flowpp import FlowPlusPlus
from flowtrain.flows.pixelcnn import PixelCNNFlow
from flowtrain.flows.realnvp import RealNVP
from flowtrain.flows.tarflow import TarFlow
from flowtrain.training.runtime import autocast

SHORT_DIGITS = ["data=digits", "model=realnvp", "model.n_filters=8", "model.n_blocks=1",
                "model.checkerboard_in=2", "model.channelwise=1", "model.checkerboard_out=1",
                "train.steps=30", "train.batch_size=32", "train.eval_every=30",
                "train.sample_every=1000", "train.checkpoint_every=30", "train.log_every=10",
                "device=cpu"]
# bf16 keeps 8 bits of mantissa in the networks: after 30 steps the test bits/dim of a
# bf16 run stays within this of the fp32 run (measured: see the closing note of issue 7).
BF16_TOLERANCE_BPD = 0.02
COMPILE_TOLERANCE_NATS = 1e-3


@pytest.fixture(scope="module")
def fp32_eager(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fp32")
    run_cli(*SHORT_DIGITS, f"hydra.run.dir={run_dir}", cwd=run_dir)
    return read_metrics(run_dir)


def test_bf16_reaches_the_bits_per_dim_of_fp32(tmp_path, fp32_eager):
    run_cli(*SHORT_DIGITS, "train.precision=bf16", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    bf16 = read_metrics(tmp_path)
    assert bf16["test_bpd"] != fp32_eager["test_bpd"]  # it really ran in bf16
    assert abs(bf16["test_bpd"] - fp32_eager["test_bpd"]) < BF16_TOLERANCE_BPD


def test_compile_reaches_the_bits_per_dim_of_eager(tmp_path):
    """train.compile=true end to end, on the 1-D mixture flow: with a cold inductor cache
    (a new CI machine) this test takes about 26 s on 2 cores, against 70-80 s for a tiny
    RealNVP. What RealNVP needs from compiling is checked just below. Both runs keep a
    weight average, which a compiled model must feed as an eager one does."""
    common = [*TINY_RUN, "device=cpu", "train.ema_decay=0.9"]
    run_cli(*common, f"hydra.run.dir={tmp_path / 'eager'}", cwd=tmp_path)
    run_cli(*common, "train.compile=true", f"hydra.run.dir={tmp_path / 'compiled'}",
            cwd=tmp_path)
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert abs(compiled["test_nll"] - eager["test_nll"]) < COMPILE_TOLERANCE_NATS
    assert abs(compiled["best_val_nll"] - eager["best_val_nll"]) < COMPILE_TOLERANCE_NATS
    saved = torch.load(tmp_path / "compiled" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["average"]["updates"] == 40
    # the averaged weights trail the trained ones, and the compiled model's state dict
    # keeps its keys, so its checkpoints load anywhere
    assert saved["average"]["model"].keys() == saved["model"].keys()
    assert any(not torch.equal(saved["average"]["model"][name], value)
               for name, value in saved["model"].items())


def test_a_flow_with_actnorm_is_one_graph_once_initialized():
    """What a compiled run's first eager pass (Trainer.initialize_eagerly) is for: before
    ActNorm's data-dependent initialization, its check breaks the graph inside the loop
    over the transforms, and dynamo then compiles each transform on its own; after it,
    the whole flow is one graph."""
    torch.manual_seed(0)
    model = RealNVP((1, 8, 8), n_filters=8, n_blocks=1, checkerboard_in=2, channelwise=1,
                    checkerboard_out=1)
    x = torch.rand(4, 1, 8, 8)
    torch._dynamo.reset()
    uninitialized = torch._dynamo.explain(model)(x)  # initializes ActNorm, eagerly
    torch._dynamo.reset()
    initialized = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    assert uninitialized.graph_break_count > 0
    assert (initialized.graph_count, initialized.graph_break_count) == (1, 0)


@pytest.mark.parametrize("make", [
    lambda: RealNVP((1, 4, 4), n_filters=8, n_blocks=1),
    lambda: PixelCNNFlow((3, 4, 4), n_components=3, n_filters=6, n_blocks=1),
    lambda: FlowPlusPlus((3, 4, 4), n_filters=8, n_blocks=1, n_components=3, heads=2,
                         column_in=1, channelwise=1, column_out=1),
    lambda: TarFlow((3, 4, 4), patch_size=2, width=16, blocks=2, layers_per_block=1,
                    head_dim=8),
])
def test_under_bf16_only_the_networks_lose_precision(make):
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = torch.rand(8, *model.event_shape)
    with autocast(torch.device("cpu"), "bf16"):
        z, log_det = model(x)
        log_prob = model.log_prob(x)
    assert z.dtype == log_det.dtype == log_prob.dtype == torch.float32
    exact = model.log_prob(x)
    assert not torch.equal(log_prob, exact)  # the networks did run in bf16
    assert torch.allclose(log_prob, exact, rtol=0.05, atol=0.5)
