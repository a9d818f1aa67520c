"""docs/RESULTS.md's table of densities known in closed form, through the real CLI: the 1-D
mixture flow (both families) on gmm1d, and arflow2d on the 2-D Gaussian mixture that
tests/test_accuracy.py writes as an array file (the same mixture and sampler, imported
from there so the two cannot drift apart).

    uv run python scripts/known_densities.py [extra overrides for every run...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from cli_runs import selection, setup_line, train

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from test_accuracy import gaussian_mixture_2d_file  # noqa: E402

STEPS = ["train.steps=3000", "train.batch_size=256", "device=cpu"]


def main(extra: list[str]) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for family in ("gaussian", "logistic"):
            metrics = train(Path(folder) / family, ["model=mixture_cdf", "data=gmm1d",
                                                    f"model.family={family}", *STEPS, *extra])
            rows.append((f"mixture_cdf, {family}, K=8 | gmm1d", metrics,
                         metrics["test_nll_true"]))
        path, true_nll = gaussian_mixture_2d_file(Path(folder))
        metrics = train(Path(folder) / "gmm2d", ["model=arflow2d", "data=array",
                                                 f"data.path={path}", *STEPS, *extra])
        rows.append(("arflow2d, K=16, 2×128 | 2-D Gaussian mixture as an array file",
                     metrics, true_nll))
    print(setup_line(extra))
    print("| model | data | best val NLL (step) | test NLL of best.pt | test NLL, last model "
          "| true density's test NLL | gap of best.pt | train time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, metrics, true_nll in rows:
        seconds = metrics["steps"] / metrics["train_samples_per_s"] * 256
        print(f"| {name} | {selection(metrics, 'nll', 5)} | {true_nll:.5f} | "
              f"{metrics['test_nll_at_best'] - true_nll:.4f} | {np.round(seconds, 1)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
