"""Flow++ against RealNVP, Glow and the PixelCNN flow on digits, each at its defaults,
through the real CLI: at an equal step budget (the digits regime's 1500 steps of 64) and
at equal training time (RealNVP's training seconds for those steps; each other model is
timed on a short run first and gets the steps that fit). Writes
docs/flowpp_digits_samples.png (the equal-step runs' last sample grids) and
docs/flowpp_comparison.json, and prints docs/RESULTS.md's markdown tables.

Every run reports the uniform-dequantization bound and the importance-weighted estimate
over ``EVAL_SAMPLES`` noise draws.

    uv run python scripts/flowpp_comparison.py [extra overrides for every run...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from cli_runs import (  # noqa: E402
    equal_budget_runs,
    save_comparison,
    selection,
    setup_line,
    training_seconds,
)

REPO = Path(__file__).resolve().parent.parent
EVAL_SAMPLES = 16
COMMON = ["data=digits", "device=cpu", "dequant=uniform",
          f"dequant.eval_samples={EVAL_SAMPLES}"]
MODELS = ["realnvp", "glow", "pixelcnn_arflow", "flowpp"]


def table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| model | parameters | steps × batch | training s | images/s | best val bpd "
             "(step) | test bpd of best.pt | test bpd, last model (bound) | test bpd, last "
             f"model (IW, {EVAL_SAMPLES}) | train bpd |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, metrics in rows:
        lines.append(f"| {name} | {metrics['params']:,} | {metrics['steps']} × "
                     f"{metrics['batch_size']} | {training_seconds(metrics):.0f} | "
                     f"{metrics['train_samples_per_s']:.0f} | {selection(metrics)} | "
                     f"{metrics['test_bpd_iw']:.3f} | {metrics['train_bpd']:.3f} |")
    return lines


def main(extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        equal_steps, equal_time, images = equal_budget_runs(MODELS, [*COMMON, *extra],
                                                            Path(folder))
    seconds = training_seconds(equal_steps[0][1])  # RealNVP's
    save_comparison("flowpp", equal_steps, equal_time, images, extra, REPO)
    print(setup_line(extra))
    print("\nEqual steps:\n" + "\n".join(table(equal_steps)))
    print(f"\nEqual training time ({seconds:.0f} s, RealNVP's):\n"
          + "\n".join(table(equal_time)))


if __name__ == "__main__":
    main(sys.argv[1:])
