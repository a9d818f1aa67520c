"""Time sampling 64 images from model=pixelcnn_arflow (default size) at 1x28x28 and 3x32x32.

    uv run python scripts/bench_pixelcnn_sampling.py [--device cpu|cuda] [--write-results]

Sampling an autoregressive flow needs one network pass per value (H x W x C). flowtrain's
sampler runs each pass over the whole batch and only over the window the value's parameters
depend on (the network's ``reach`` rows above and columns either side; masked convolutions
never look below the current row). The plain baseline, timed in the same run, passes the
whole image every time. Untrained weights: the cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from cli_runs import fill_between_markers, markdown_table

from flowtrain.flows.mixture import ScalarMixture
from flowtrain.flows.pixelcnn import PixelCNNFlow, PixelCNNMixtureCDF

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- pixelcnn-sampling:begin -->", "<!-- pixelcnn-sampling:end -->"


@torch.no_grad()
def sample_plain(transform: PixelCNNMixtureCDF, z: torch.Tensor) -> torch.Tensor:
    """The straightforward sampler: the full image through the network for every value."""
    x = torch.zeros_like(z)
    _, channels, height, width = z.shape
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                full = transform.mixture(x)
                at = (slice(None), c, i, j)
                x[at] = ScalarMixture(full.logits[at], full.loc[at], full.log_scale[at],
                                      transform.family).inverse_cdf(z[at])
    return x


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> tuple[float, torch.Tensor]:
    """Wall time of ``function()``, with the device idle before and after it."""
    synchronize(device)
    started = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--network", default="gated", choices=["gated", "plain"])
    parser.add_argument("--write-results", action="store_true",
                        help="put the table into docs/RESULTS.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({torch.get_num_threads()} threads, {platform.machine()})")
    rows = []
    for shape in [(1, 28, 28), (3, 32, 32)]:
        torch.manual_seed(0)
        model = PixelCNNFlow(shape, network=args.network).to(device).eval()
        z = torch.rand((args.n, *shape), device=device,
                       generator=torch.Generator(device).manual_seed(0))
        with torch.no_grad():  # warm-up: kernels chosen, memory allocated, before the clock
            model.transforms[0].mixture(z)
        ours, x = timed(lambda model=model, z=z: model.inverse(z), device)
        plain, x_plain = timed(lambda model=model, z=z: sample_plain(model.transforms[0], z),
                               device)
        assert torch.allclose(x, x_plain, atol=1e-5), "the two samplers disagree"
        rows.append({"shape": "x".join(map(str, shape)), "network": args.network, "n": args.n,
                     "network_passes": shape[0] * shape[1] * shape[2],
                     "seconds": round(ours, 2), "plain_seconds": round(plain, 2),
                     "speedup": round(plain / ours, 2), "device": name,
                     "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")})
        print(json.dumps(rows[-1]))
    if args.write_results:
        table = markdown_table(
            ["image", "network", "samples", "network passes", "flowtrain (s)",
             "plain baseline (s)", "speed-up", "device", "torch", "date"],
            [[r["shape"], r["network"], str(r["n"]), str(r["network_passes"]),
              str(r["seconds"]), str(r["plain_seconds"]), f"{r['speedup']}x", r["device"],
              r["torch"], r["date"]] for r in rows])
        fill_between_markers(REPO / "docs" / "RESULTS.md", (BEGIN, END), table)

if __name__ == "__main__":
    main()
