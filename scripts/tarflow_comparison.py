"""TarFlow against RealNVP, Glow, the PixelCNN flow and Flow++ on digits (8x8), each at its
defaults, through the real CLI: at an equal step budget (the digits regime's 1500 steps of
64) and at equal training time (RealNVP's training seconds for those steps; each other
model is timed on a short run first and gets the steps that fit). Then the time to draw 64
samples from each equal-step run's best.pt through ``flowtrain.load`` (TarFlow with and
without its key/value cache). Writes docs/tarflow_digits_samples.png and
docs/tarflow_comparison.json, and prints docs/RESULTS.md's markdown tables.

Every run uses uniform dequantization, so every bits/dim is the same discrete bound.
On a shared machine, pin it to one core so the timings do not fight other work:

    OMP_NUM_THREADS=1 taskset -c 0 uv run python scripts/tarflow_comparison.py [overrides...]
"""

from __future__ import annotations

import sys
import tempfile
import time
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

import flowtrain  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMON = ["data=digits", "dequant=uniform"]
MODELS = ["realnvp", "glow", "pixelcnn_arflow", "flowpp", "tarflow"]
N_SAMPLES, REPEATS = 64, 3


def sampling_seconds(checkpoint: Path, kv_cache: bool = True) -> float:
    """The fastest of ``REPEATS`` draws of ``N_SAMPLES`` samples from ``checkpoint``."""
    flow = flowtrain.load(checkpoint)
    if hasattr(flow.model, "kv_cache"):
        flow.model.kv_cache = kv_cache
    flow.sample(2, seed=0)  # first-call costs out of the timing
    times = []
    for repeat in range(REPEATS):
        started = time.perf_counter()
        flow.sample(N_SAMPLES, seed=repeat)
        times.append(time.perf_counter() - started)
    return min(times)


def table(rows: list[tuple[str, dict]], with_sampling: bool) -> list[str]:
    sampling = " 64 samples, s (no cache) |" if with_sampling else ""
    lines = ["| model | parameters | steps × batch | training s | images/s | best val bpd "
             f"(step) | test bpd of best.pt | test bpd, last model | train bpd |{sampling}",
             "| --- " * (9 + with_sampling) + "|"]
    for name, metrics in rows:
        cells = (f"| {name} | {metrics['params']:,} | {metrics['steps']} × "
                 f"{metrics['batch_size']} | {training_seconds(metrics):.0f} | "
                 f"{metrics['train_samples_per_s']:.0f} | {selection(metrics)} | "
                 f"{metrics['train_bpd']:.3f} |")
        if with_sampling:
            uncached = metrics.get("sampling_s_no_cache")
            cells += (f" {metrics['sampling_s']:.3f}"
                      + (f" ({uncached:.3f})" if uncached is not None else "") + " |")
        lines.append(cells)
    return lines


def time_sampling(model: str, run_dir: Path, metrics: dict) -> None:
    best = run_dir / "checkpoints" / "best.pt"
    metrics["sampling_s"] = sampling_seconds(best)
    if model == "tarflow":
        metrics["sampling_s_no_cache"] = sampling_seconds(best, kv_cache=False)


def main(extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        equal_steps, equal_time, images = equal_budget_runs(
            MODELS, [*COMMON, *extra], Path(folder), after_run=time_sampling)
    seconds = training_seconds(equal_steps[0][1])  # RealNVP's
    save_comparison("tarflow", equal_steps, equal_time, images, extra, REPO)
    print(setup_line(extra))
    print("\nEqual steps:\n" + "\n".join(table(equal_steps, with_sampling=True)))
    print(f"\nEqual training time ({seconds:.0f} s, RealNVP's):\n"
          + "\n".join(table(equal_time, with_sampling=False)))


if __name__ == "__main__":
    main(sys.argv[1:])
