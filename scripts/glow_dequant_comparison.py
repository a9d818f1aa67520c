"""RealNVP and Glow, each with uniform and variational dequantization, on digits at the same
step budget through the real CLI: writes docs/glow_dequant_samples.png (the last sample grid
of each run) and docs/glow_dequant.json, and prints docs/RESULTS.md's markdown table.

Every run also reports the importance-weighted test estimate over the same number of noise
draws (``dequant.eval_samples``), so the bound and the estimate compare across both kinds of
dequantization.

    uv run python scripts/glow_dequant_comparison.py [extra overrides for every run...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from cli_runs import compare, selection, setup_line  # noqa: E402

EVAL_SAMPLES = 16
RUNS = {f"{model}, {dequant}": [f"model={model}", f"dequant={dequant}",
                                f"dequant.eval_samples={EVAL_SAMPLES}"]
        for model in ("realnvp", "glow") for dequant in ("uniform", "variational")}
REPO = Path(__file__).resolve().parent.parent


def main(extra: list[str]) -> None:
    rows = compare(RUNS, ["data=digits", "device=cpu", *extra],
                   REPO / "docs" / "glow_dequant_samples.png")
    (REPO / "docs" / "glow_dequant.json").write_text(json.dumps(
        {"setup": setup_line(extra), "runs": dict(rows)}, indent=2) + "\n")
    print(setup_line(extra))
    print(f"| model, dequantization | steps | parameters (model + dequantizer) | best val "
          f"bpd (step) | test bpd of best.pt | test bpd, last model (bound) | test bpd, last "
          f"model (IW, {EVAL_SAMPLES}) | train bpd | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, metrics in rows:
        print(f"| {name} | {metrics['steps']} | {metrics['params']:,} + "
              f"{metrics['dequant_params']:,} | {selection(metrics)} | "
              f"{metrics['test_bpd_iw']:.3f} | {metrics['train_bpd']:.3f} | "
              f"{metrics['wall_s']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
