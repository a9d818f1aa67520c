"""Flow++ on digits from its two initializations, through the real CLI: ``model.init=
identity`` (torch's initialization, zero output convolutions: every coupling starts as
the identity) and ``model.init=released`` (the released data-dependent initialization),
at the digits regime's 1500 steps of 64, for each of ``--seeds``. Writes
docs/flowpp_init.json and prints the markdown table for docs/RESULTS.md.

    uv run python scripts/flowpp_init_comparison.py [--seeds 0,1] [extra overrides...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cli_runs import run, selection, setup_line, training_seconds
from flowpp_comparison import COMMON, EVAL_SAMPLES
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent
INITS = ["identity", "released"]


def first_train_bpd(run_dir: Path, n_dims: int) -> tuple[int, float]:
    """The first logged training loss (step, bits/dim): how far the start is from the
    data before much training."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    first = events.Scalars("train/bpd")[0] if "train/bpd" in events.Tags()["scalars"] else None
    if first is None:
        first = events.Scalars("train/nll")[0]
        return first.step, first.value / (n_dims * 0.6931471805599453)
    return first.step, first.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    args, extra = parser.parse_known_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in [int(seed) for seed in args.seeds.split(",")]:
            for init in INITS:
                run_dir = Path(folder) / f"{init}-{seed}"
                metrics = run(run_dir, [*COMMON, "model=flowpp", f"model.init={init}",
                                        f"seed={seed}", *extra])
                step, early = first_train_bpd(run_dir, 64)
                rows.append({"init": init, "seed": seed, "first_logged_step": step,
                             "first_logged_train_bpd": early, **metrics})
                print(json.dumps(rows[-1]), flush=True)
    (REPO / "docs" / "flowpp_init.json").write_text(json.dumps(
        {"setup": setup_line(extra), "runs": rows}, indent=1) + "\n")
    print(setup_line(extra))
    print(f"| init | seed | train bpd at step {rows[0]['first_logged_step']} | best val bpd "
          f"(step) | test bpd of best.pt | test bpd, last model | test bpd, last model "
          f"(IW, {EVAL_SAMPLES}) | train bpd | training s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['init']} | {row['seed']} | {row['first_logged_train_bpd']:.3f} | "
              f"{selection(row)} | {row['test_bpd_iw']:.3f} | {row['train_bpd']:.3f} | "
              f"{training_seconds(row):.0f} |")


if __name__ == "__main__":
    main()
