"""Training and sampling throughput and peak memory of the image models, per mode and size,
against a plain RealNVP baseline measured in the same run.

    uv run python scripts/bench.py [--device cpu|cuda] [--sizes small,full] [--write]

Each (model, mode, size) runs in a fresh process, so its peak memory is its own (RSS on the
CPU, ``torch.cuda.max_memory_allocated`` on a GPU). ``--write`` stores the rows in
docs/benchmarks.json and a table in docs/BENCHMARKS.md with the device, versions and date.
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
SIZES = {  # the no-argument model on MNIST-sized images, and the seed's full size
    "small": {"shape": (1, 28, 28), "realnvp": {}, "pixelcnn_arflow": {}},
    "full": {"shape": (3, 32, 32), "realnvp": {"n_filters": 128, "n_blocks": 8},
             "pixelcnn_arflow": {"n_filters": 128, "n_blocks": 8}},
}
MODELS = ["plain_realnvp", "realnvp", "pixelcnn_arflow"]
MODES = ["eager", "compile", "bf16", "channels_last"]


def build(model_name: str, size: str) -> torch.nn.Module:
    from plain_realnvp import PlainRealNVP

    from flowtrain.flows.pixelcnn import PixelCNNFlow
    from flowtrain.flows.realnvp import RealNVP

    shape = SIZES[size]["shape"]
    if model_name == "pixelcnn_arflow":
        return PixelCNNFlow(shape, **SIZES[size]["pixelcnn_arflow"])
    model = RealNVP(shape, **SIZES[size]["realnvp"])
    return PlainRealNVP(model) if model_name == "plain_realnvp" else model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def measure(model_name: str, mode: str, size: str, batch: int, steps: int,
            device: torch.device) -> dict:
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
    row = {"model": model_name, "mode": mode, "size": size,
           "shape": "x".join(map(str, SIZES[size]["shape"])), "batch": batch,
           "train_images_per_s": round(batch * steps / train_seconds, 1)}
    if hasattr(model, "sample") and mode in ("eager", "bf16"):
        n = 8 if model_name == "pixelcnn_arflow" else batch  # a pass per value: keep it short
        model.eval()
        synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            model.sample(n)
        synchronize(device)
        row["samples_per_s"] = round(n / (time.perf_counter() - started), 2)
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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, {platform.machine()})"


def markdown(rows: list[dict], device: torch.device) -> str:
    lines = [f"# Benchmarks\n\nDevice: {device_name(device)}; torch {torch.__version__}; "
             f"{time.strftime('%Y-%m-%d')}. `uv run python scripts/bench.py --write`.\n",
             "Training steps are Adam steps on -log p of a batch (two warm-up steps first). "
             "`plain_realnvp` is the baseline: the same layers, masks repeated per batch, "
             "log-dets carried per element and summed at the end. The speed-up is against "
             "the baseline's eager images/s at the same size and batch (RealNVP rows only). "
             "On the CPU, 10 timed steps vary by about 10% from run to run.\n",
             "| model | size | mode | batch | train images/s | speed-up vs plain | samples/s "
             "| peak memory (MiB) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    baseline = {row["size"]: row["train_images_per_s"] for row in rows
                if row["model"] == "plain_realnvp" and row["mode"] == "eager"}
    for row in rows:
        compared = row["model"] in ("plain_realnvp", "realnvp") and row["size"] in baseline
        speedup = row["train_images_per_s"] / baseline[row["size"]] if compared else None
        lines.append(f"| {row['model']} | {row['size']} ({row['shape']}) | {row['mode']} | "
                     f"{row['batch']} | {row['train_images_per_s']} | "
                     f"{'' if speedup is None else f'{speedup:.2f}x'} | "
                     f"{row.get('samples_per_s', '')} | {row['peak_memory_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="small,full (default: small on the CPU)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--write", action="store_true")
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
        print(json.dumps(measure(model_name, mode, size, args.batch, args.steps, device)))
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
                     "--steps", str(args.steps)], capture_output=True, text=True)
                if result.returncode != 0:
                    print(f"{model_name} {mode} {size} failed:\n{result.stderr[-2000:]}",
                          file=sys.stderr)
                    continue
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    if args.write:
        (REPO / "docs" / "benchmarks.json").write_text(json.dumps(
            {"device": device_name(device), "torch": torch.__version__,
             "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
        (REPO / "docs" / "BENCHMARKS.md").write_text(markdown(rows, device))
    else:
        print(markdown(rows, device))


if __name__ == "__main__":
    main()
