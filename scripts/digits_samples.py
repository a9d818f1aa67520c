"""Train RealNVP and both PixelCNN flows on digits at the same step budget through the real
CLI, then write docs/digits_samples.png (each run's last sample grid, side by side) and print
a markdown results table.

    uv run python scripts/digits_samples.py [extra overrides for every run...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from cli_runs import compare, selection, setup_line  # noqa: E402

RUNS = {
    "realnvp": ["model=realnvp"],
    "pixelcnn_arflow, network=plain": ["model=pixelcnn_arflow", "model.network=plain"],
    "pixelcnn_arflow, network=gated": ["model=pixelcnn_arflow", "model.network=gated"],
}
REPO = Path(__file__).resolve().parent.parent


def main(extra: list[str]) -> None:
    rows = compare(RUNS, ["data=digits", "device=cpu", *extra],
                   REPO / "docs" / "digits_samples.png")
    print(setup_line(extra))
    print("| model | steps | parameters | best val bpd (step) | test bpd of best.pt | "
          "test bpd, last model | train bpd | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, metrics in rows:
        print(f"| {name} | {metrics['steps']} | {metrics['params']:,} | {selection(metrics)} "
              f"| {metrics['train_bpd']:.3f} | {metrics['wall_s']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
