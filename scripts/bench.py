"""Training and sampling throughput and peak memory of the image models, per mode and size,
against a plain RealNVP baseline measured in the same run.

    uv run python scripts/bench.py [--device cpu|cuda] [--sizes small,full] [--write]

Each (model, mode, size) runs in a fresh process, so its peak memory is its own (RSS on the
CPU, ``torch.cuda.max_memory_allocated`` on a GPU). ``--write`` merges the rows into
docs/benchmarks.json (a row replaces the one with the same model, mode and size, so a
slow size can run apart with its own batch) and rewrites docs/BENCHMARKS.md with the
device, versions and date.

Model FLOPs are counted once per row with ``torch.utils.flop_counter`` on an eager train
step (convolutions and matrix products, forward and backward); the model-FLOPs utilization
divides the achieved rate by the device's dense peak where it is known (``--peak-tflops``
otherwise).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SIZES = {  # the no-argument model on MNIST-sized images, and the seed's full size with
    # the seed's own residual block (1x1 -> 3x3 -> 1x1), so that a comparison with the
    # seed's code is at equal architecture
    "small": {"shape": (1, 28, 28), "realnvp": {}, "pixelcnn_arflow": {}, "flowpp": {},
              "tarflow": {}},
    "full": {"shape": (3, 32, 32),
             "realnvp": {"n_filters": 128, "n_blocks": 8, "residual_block": "bottleneck"},
             "pixelcnn_arflow": {"n_filters": 128, "n_blocks": 8},
             # experiment=flowpp_cifar10's model (its dequantizer not included)
             "flowpp": {"n_filters": 96, "n_blocks": 10, "n_components": 32, "dropout": 0.2},
             # experiment=tarflow_imagenet64's model (on 3x32x32: 256 tokens of 12 values)
             "tarflow": {"patch_size": 2, "width": 768, "blocks": 8, "layers_per_block": 8,
                         "head_dim": 64}},
}
MODELS = ["plain_realnvp", "realnvp", "realnvp_networks_only", "pixelcnn_arflow", "flowpp",
          "tarflow"]
# Rows compared with the plain RealNVP baseline: the RealNVP variants.
COMPARED_WITH_BASELINE = ("plain_realnvp", "realnvp", "realnvp_networks_only")
# Dense tensor-core peaks from the vendors' data sheets, TFLOP/s: (bf16, tf32). fp32 rows
# use the TF32 peak, since PyTorch lets cuDNN run fp32 convolutions as TF32 by default.
PEAK_TFLOPS = {"H100 PCIe": (756.0, 378.0), "H100": (989.4, 494.7),
               "H200": (989.4, 494.7), "A100": (312.0, 156.0)}
MODES = ["eager", "compile", "bf16", "channels_last"]


def build(model_name: str, size: str) -> torch.nn.Module:
    from plain_realnvp import CouplingNetworksOnly, PlainRealNVP

    from flowtrain.flows.flowpp import FlowPlusPlus
    from flowtrain.flows.pixelcnn import PixelCNNFlow
    from flowtrain.flows.realnvp import RealNVP
    from flowtrain.flows.tarflow import TarFlow

    shape = SIZES[size]["shape"]
    if model_name == "tarflow":
        return TarFlow(shape, **SIZES[size]["tarflow"])
    if model_name == "pixelcnn_arflow":
        return PixelCNNFlow(shape, **SIZES[size]["pixelcnn_arflow"])
    if model_name == "flowpp":
        return FlowPlusPlus(shape, **SIZES[size]["flowpp"])
    model = RealNVP(shape, **SIZES[size]["realnvp"])
    wrappers = {"plain_realnvp": PlainRealNVP, "realnvp_networks_only": CouplingNetworksOnly}
    return wrappers[model_name](model) if model_name in wrappers else model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def significant(value: float, digits: int = 4) -> float:
    """Rounded to ``digits`` significant digits: 1.6 images/s keeps its ratios too."""
    return float(f"{value:.{digits}g}")


def peak_tflops(device: torch.device, mode: str, given: float | None) -> float | None:
    """The dense peak the utilization is measured against; None where unknown (CPUs)."""
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (bf16, tf32) in PEAK_TFLOPS.items():  # "H100 PCIe" is checked before "H100"
        if key in name:
            return bf16 if mode == "bf16" else tf32
    return None


def train_step_flops(model: torch.nn.Module, x: torch.Tensor, mode: str) -> int:
    """Model FLOPs of one eager train step (forward and backward), the optimizer left out."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = -model.log_prob(x).mean()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(model_name: str, mode: str, size: str, batch: int, steps: int,
            device: torch.device, given_peak: float | None = None) -> dict:
    """One row: train images/s over ``steps`` steps after two warm-up steps, and samples/s."""
    torch.manual_seed(0)
    model = build(model_name, size).to(device)
    x = torch.rand(batch, *SIZES[size]["shape"], device=device)
    if model_name != "pixelcnn_arflow":
        x = torch.logit(0.05 + 0.9 * x)  # the RealNVP's inputs live in logit space
    if mode == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    log_prob = model.log_prob
    if mode == "compile":
        log_prob = torch.compile(model.log_prob)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = -log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    train_seconds = time.perf_counter() - started
    flops = train_step_flops(model, x, mode)
    achieved_tflops = flops * steps / train_seconds / 1e12
    row = {"model": model_name, "mode": mode, "size": size,
           "shape": "x".join(map(str, SIZES[size]["shape"])), "batch": batch,
           "train_images_per_s": significant(batch * steps / train_seconds),
           "train_gflop_per_image": round(flops / batch / 1e9, 3),
           "achieved_tflops": round(achieved_tflops, 4)}
    peak = peak_tflops(device, mode, given_peak)
    if peak:
        row["mfu"] = round(achieved_tflops / peak, 4)
    if hasattr(model, "sample") and mode in ("eager", "bf16"):
        # a network pass per value: keep the autoregressive sampler's batch short
        n = min(batch, 8 if size == "small" else 1) if model_name == "pixelcnn_arflow" else batch
        model.eval()
        synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            model.sample(n)
        synchronize(device)
        row["samples_per_s"] = significant(n / (time.perf_counter() - started))
    row["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    return row


def check_baseline_agrees(device: torch.device) -> None:
    """The baseline computes the same log-density as flowtrain's RealNVP."""
    from plain_realnvp import PlainRealNVP

    from flowtrain.flows.realnvp import RealNVP

    torch.manual_seed(0)
    model = RealNVP((1, 8, 8), n_filters=8, n_blocks=1).to(device).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = torch.randn(4, 1, 8, 8, device=device, dtype=torch.float64)
    ours = model.log_prob(x)  # initializes ActNorm; the baseline then reuses it
    if not torch.allclose(ours, PlainRealNVP(model).log_prob(x), rtol=1e-10):
        raise SystemExit("the plain baseline and flowtrain's RealNVP disagree")


def merged_rows(path: Path, new_rows: list[dict], device: str) -> list[dict]:
    """The saved rows of the same device with ``new_rows`` replacing their namesakes, in
    size, model and mode order; another device's rows are dropped, not mixed in."""
    saved = json.loads(path.read_text()) if path.exists() else {}
    rows = saved.get("rows", []) if saved.get("device") == device else []

    def key(row: dict) -> tuple[str, str, str]:
        return row["size"], row["model"], row["mode"]

    merged = {key(row): row for row in rows} | {key(row): row for row in new_rows}

    def order(row: dict) -> tuple[int, int, int]:
        return (list(SIZES).index(row["size"]), MODELS.index(row["model"]),
                MODES.index(row["mode"]))

    return sorted(merged.values(), key=order)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, {platform.machine()})"


def markdown(rows: list[dict], device: torch.device) -> str:
    lines = [f"# Benchmarks\n\nDevice: {device_name(device)}; torch {torch.__version__}; "
             f"{time.strftime('%Y-%m-%d')}. `uv run python scripts/bench.py --write`.\n",
             "Training steps are Adam steps on -log p of a batch (two warm-up steps first). "
             "`plain_realnvp` is the baseline: the same layers, masks repeated per batch, "
             "log-dets carried per element and summed at the end. `realnvp_networks_only` "
             "runs the same coupling networks on inputs of the same shapes and nothing "
             "else (no masks, transforms, log-dets, ActNorm or base density): the ceiling "
             "for any RealNVP built from these networks. The speed-up is against "
             "the baseline's eager images/s at the same size and batch (RealNVP rows only). "
             "On the CPU, 10 timed steps vary by about 10% from run to run. GFLOP/image "
             "counts the model FLOPs of a train step (forward and backward); MFU divides "
             "the achieved rate by the device's dense bf16 (bf16 rows) or TF32 peak. "
             "Sizes: small is the no-argument RealNVP (32 filters, 2 basic blocks) on "
             "1x28x28; full is the seed's RealNVP (128 filters, 8 of the seed's bottleneck "
             "blocks), a 128 x 8 PixelCNN flow, experiment=flowpp_cifar10's Flow++ model "
             "(without its dequantizer) and experiment=tarflow_imagenet64's TarFlow (patch "
             "2, width 768, 8 blocks of 8 layers) on 3x32x32; small uses each model's "
             "defaults. TarFlow samples with its key/value cache.\n",
             "| model | size | mode | batch | train images/s | speed-up vs plain | samples/s "
             "| peak memory (MiB) | GFLOP/image | TFLOP/s | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    baseline = {row["size"]: row["train_images_per_s"] for row in rows
                if row["model"] == "plain_realnvp" and row["mode"] == "eager"}
    for row in rows:
        compared = row["model"] in COMPARED_WITH_BASELINE and row["size"] in baseline
        speedup = row["train_images_per_s"] / baseline[row["size"]] if compared else None
        mfu = f"{row['mfu']:.1%}" if "mfu" in row else ""
        lines.append(f"| {row['model']} | {row['size']} ({row['shape']}) | {row['mode']} | "
                     f"{row['batch']} | {row['train_images_per_s']} | "
                     f"{'' if speedup is None else f'{speedup:.2f}x'} | "
                     f"{row.get('samples_per_s', '')} | {row['peak_memory_mb']} | "
                     f"{row.get('train_gflop_per_image', '')} | "
                     f"{row.get('achieved_tflops', '')} | "
                     f"{mfu} |")
    return "\n".join(lines + ceiling_notes(rows, baseline)) + "\n"


def ceiling_notes(rows: list[dict], baseline: dict[str, float]) -> list[str]:
    """Per size: how fast the coupling networks alone run against the plain baseline, which
    bounds what any rewrite of the rest of the flow can gain at the same precision."""
    notes = []
    for row in rows:
        if (row["model"], row["mode"]) == ("realnvp_networks_only", "eager") and \
                row["size"] in baseline:
            ratio = row["train_images_per_s"] / baseline[row["size"]]
            notes.append(f"\nAt the {row['size']} size the coupling networks alone train at "
                         f"{ratio:.2f}x the plain baseline's images/s in fp32 eager: the "
                         f"masks, transforms, log-dets and base density cost "
                         f"{max(0.0, 1 - 1 / ratio):.0%} of the baseline's step, within the "
                         f"run-to-run noise, so no rewrite of them can reach a large "
                         f"speed-up at this precision; bf16 and (on a GPU) the convolution "
                         f"kernels are where speed comes from.")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="small,full (default: small on the CPU)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense peak for the MFU column (known GPUs: built in)")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite docs/BENCHMARKS.md from docs/benchmarks.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # model,mode,size: a child process
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.table_only:
        saved = json.loads((REPO / "docs" / "benchmarks.json").read_text())
        (REPO / "docs" / "BENCHMARKS.md").write_text(markdown(saved["rows"], device))
        return
    if args.one:
        model_name, mode, size = args.one.split(",")
        print(json.dumps(measure(model_name, mode, size, args.batch, args.steps, device,
                                 args.peak_tflops)))
        return
    check_baseline_agrees(device)
    sizes = (args.sizes or ("small,full" if device.type == "cuda" else "small")).split(",")
    rows = []
    for size in sizes:
        for model_name in args.models.split(","):
            for mode in args.modes.split(","):
                result = subprocess.run(
                    [sys.executable, __file__, "--one", f"{model_name},{mode},{size}",
                     "--device", args.device, "--batch", str(args.batch),
                     "--steps", str(args.steps)]
                    + ([] if args.peak_tflops is None
                       else ["--peak-tflops", str(args.peak_tflops)]),
                    capture_output=True, text=True)
                if result.returncode != 0:
                    print(f"{model_name} {mode} {size} failed:\n{result.stderr[-2000:]}",
                          file=sys.stderr)
                    continue
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    if args.write:
        rows = merged_rows(REPO / "docs" / "benchmarks.json", rows, device_name(device))
        (REPO / "docs" / "benchmarks.json").write_text(json.dumps(
            {"device": device_name(device), "torch": torch.__version__,
             "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
        (REPO / "docs" / "BENCHMARKS.md").write_text(markdown(rows, device))
    else:
        print(markdown(rows, device))


if __name__ == "__main__":
    main()
