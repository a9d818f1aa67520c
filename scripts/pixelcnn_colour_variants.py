"""What limits the PixelCNN flow on colour: variants against RealNVP at an equal budget of
training seconds on photo patches (3x32x32, offline), one JSON line per variant.

A plain loop, not the CLI, so that every variant gets exactly ``--budget`` seconds of
training steps (Adam, 50 warm-up steps then a constant learning rate, batch 32, gradients
clipped at 100), then the test split's bits/dim with one dequantization draw.

    uv run python scripts/pixelcnn_colour_variants.py [--budget 200] [--only NAME ...]
        [--flush-denormal]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import Tensor, nn

from flowtrain.data.images import PhotoPatches
from flowtrain.dequant import UniformDequantization
from flowtrain.flows.base import FlowModel
from flowtrain.flows.gated_pixelcnn import GatedPixelCNN
from flowtrain.flows.masked_conv import square_masked_conv
from flowtrain.flows.pixelcnn import PixelCNNFlow
from flowtrain.flows.realnvp import RealNVP
from flowtrain.likelihood import Preprocessing, bits_per_dim, negative_log_likelihood

# name: (model, its keyword arguments, learning rate); every other setting is the default's
VARIANTS = {
    "realnvp": ("realnvp", {}, 1e-3),
    "pixelcnn_arflow": ("pixelcnn", {}, 1e-3),
    "lr 1e-2": ("pixelcnn", {}, 1e-2),
    "linear skip": ("pixelcnn_skip", {}, 1e-3),
    "16 components": ("pixelcnn", {"n_components": 16}, 1e-3),
    "64 filters": ("pixelcnn", {"n_filters": 64}, 1e-3),
    "6 blocks": ("pixelcnn", {"n_blocks": 6}, 1e-3),
}


class LinearSkip(nn.Module):
    """The gated network plus a linear path: its type-A input features (linear in the
    values before each one) straight to the mixture parameters through a zero-initialised
    1x1 type-B convolution, beside the gated stacks and the head's two ReLUs. The input
    features are read off the network's own input layers by hooks, not recomputed."""

    def __init__(self, net: GatedPixelCNN, n_colours: int):
        super().__init__()
        self.net = net
        self.skip = square_masked_conv(net.head.hidden.in_channels, net.head.output.out_channels,
                                       1, n_colours, include_centre=True)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)
        self.reach = net.reach
        self._inputs: list[Tensor] = []
        for layer in (net.input_horizontal, net.input_vertical):
            layer.register_forward_hook(lambda _, __, out: self._inputs.append(out))

    def forward(self, x: Tensor) -> Tensor:
        self._inputs.clear()
        out = self.net(x)  # [B, C, H, W, P]
        extra = self.skip(sum(self._inputs))  # channel p * C + c: parameter p of colour c
        batch, _, height, width = extra.shape
        extra = extra.view(batch, self.net.head.outputs_per_value, self.net.head.n_colours,
                           height, width)
        return out + extra.permute(0, 2, 3, 4, 1)


def build(kind: str, shape: tuple[int, ...], options: dict) -> FlowModel:
    if kind == "realnvp":
        return RealNVP(shape, **options)
    model = PixelCNNFlow(shape, **options)
    if kind == "pixelcnn_skip":
        model.transforms[0].net = LinearSkip(model.transforms[0].net, shape[0])
    return model


def run(name: str, budget: float) -> dict:
    kind, options, lr = VARIANTS[name]
    torch.manual_seed(0)
    data = PhotoPatches()
    shape = tuple(data.event_shape)
    preprocessing = Preprocessing.for_data(
        UniformDequantization(data.levels, 0.05, event_shape=shape), data)
    model = build(kind, shape, options)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1)
    step, trained, losses = 0, 0.0, []
    while trained < budget:
        started = time.perf_counter()
        batch = data.train[torch.randint(len(data.train), (32,), generator=generator)]
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        loss = negative_log_likelihood(model, preprocessing, batch, generator).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        optimizer.step()
        trained += time.perf_counter() - started
        losses.append(bits_per_dim(loss.item(), math.prod(shape)))
        step += 1
    with torch.no_grad():
        test = negative_log_likelihood(model, preprocessing, data.test,
                                       torch.Generator().manual_seed(5)).mean().item()
    return {"variant": name, "params": sum(p.numel() for p in model.parameters()),
            "steps": step, "train_bpd_last_20_steps": round(sum(losses[-20:]) / 20, 3),
            "test_bpd": round(bits_per_dim(test, math.prod(shape)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=200.0, help="training seconds each")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--flush-denormal", action="store_true",
                        help="treat subnormal floats as zero (lr 1e-2 steps are slower without)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(args.flush_denormal)
    for name in args.only:
        print(json.dumps(run(name, args.budget)), flush=True)


if __name__ == "__main__":
    main()
