"""Train model=arflow2d on every 2-D toy set with the default config, through the real CLI,
then write docs/toy2d.png (the density figures stacked) and print a markdown results table.

    uv run python scripts/toy2d_gallery.py [extra overrides...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from cli_runs import last_image, save_panels, selection, setup_line, train  # noqa: E402

NAMES = ["moons", "rings", "eight_gaussians", "checkerboard", "image"]
REPO = Path(__file__).resolve().parent.parent


def main(extra: list[str]) -> None:
    rows, images = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in NAMES:
            run_dir = Path(folder) / name
            metrics = train(run_dir, ["model=arflow2d", "data=toy2d", f"data.name={name}",
                                      "device=cpu", *extra])
            rows.append((name, metrics))
            images.append(last_image(run_dir, "density"))
    save_panels(images, NAMES, REPO / "docs" / "toy2d.png", across=False,
                panel_size=(16, 4.2), dpi=40, fontsize=16, loc="left")
    print(setup_line(extra))
    print("| data.name | steps | best val NLL (step) | test NLL of best.pt | test NLL, last "
          "model | true test NLL | gap of best.pt | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, metrics in rows:
        true = metrics.get("test_nll_true")
        gap = "" if true is None else f"{metrics['test_nll_at_best'] - true:.4f}"
        true_text = "no closed form" if true is None else f"{true:.4f}"
        print(f"| {name} | {metrics['steps']} | {selection(metrics, 'nll', 4)} | {true_text} "
              f"| {gap} | {metrics['wall_s']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
