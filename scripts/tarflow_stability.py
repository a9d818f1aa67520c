"""What TarFlow needs to train stably on digits: runs at the image regime's learning rate and
at ten times it, without and with gradient clipping, a weight average and bounded
log-scales, through the real CLI (750 steps, half the regime's, each).
Prints a markdown table (and writes docs/tarflow_stability.json): skipped non-finite steps,
the largest logged gradient norm, and bits/dim.

    OMP_NUM_THREADS=1 taskset -c 0 uv run python scripts/tarflow_stability.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from cli_runs import run, selection, setup_line
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent
COMMON = ["model=tarflow", "data=digits", "dequant=uniform", "train.steps=750",
          "train.log_every=10", "train.sample_every=100000"]
VARIANTS = {
    "lr 1e-3, clip 100 (the regime's)": ["optim.lr=1e-3"],
    "lr 1e-3, no clipping": ["optim.lr=1e-3", "train.grad_clip=0"],
    "lr 1e-2, no clipping": ["optim.lr=1e-2", "train.grad_clip=0"],
    "lr 1e-2, clip 1": ["optim.lr=1e-2", "train.grad_clip=1"],
    "lr 1e-2, clip 1, EMA 0.99": ["optim.lr=1e-2", "train.grad_clip=1",
                                  "train.ema_decay=0.99"],
    "lr 1e-2, no clipping, log-scales bounded by 3": ["optim.lr=1e-2", "train.grad_clip=0",
                                                      "model.max_log_scale=3"],
}


def largest_grad_norm(run_dir: Path) -> float:
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return max(event.value for event in accumulator.Scalars("grad_norm"))


def main(extra: list[str]) -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, overrides) in enumerate(VARIANTS.items()):
            run_dir = Path(folder) / str(index)
            metrics = run(run_dir, [*COMMON, *overrides, *extra])
            rows[name] = metrics | {"max_grad_norm": largest_grad_norm(run_dir)}
            print(name, rows[name]["test_bpd_at_best"], flush=True)
    (REPO / "docs" / "tarflow_stability.json").write_text(json.dumps(
        {"setup": setup_line(extra), "common": COMMON, "runs": rows}, indent=2) + "\n")
    print(setup_line(extra))
    print("| run | non-finite steps skipped | largest gradient norm (logged every 10 steps) "
          "| best val bpd (step) | test bpd of best.pt | test bpd, last model |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, metrics in rows.items():
        print(f"| {name} | {metrics['nonfinite_steps']} | {metrics['max_grad_norm']:.3g} | "
              f"{selection(metrics)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
