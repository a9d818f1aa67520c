"""Train RealNVP and both PixelCNN flows on digits at the same step budget through the real
CLI, then write docs/digits_samples.png (each run's last sample grid, side by side) and print
a markdown results table.

    uv run python scripts/digits_samples.py [extra overrides for every run...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from cli_runs import last_image, save_panels, setup_line, train  # noqa: E402

RUNS = {
    "realnvp": ["model=realnvp"],
    "pixelcnn_arflow, network=plain": ["model=pixelcnn_arflow", "model.network=plain"],
    "pixelcnn_arflow, network=gated": ["model=pixelcnn_arflow", "model.network=gated"],
}
REPO = Path(__file__).resolve().parent.parent


def main(extra: list[str]) -> None:
    rows, images = [], []
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, overrides) in enumerate(RUNS.items()):
            run_dir = Path(folder) / str(index)
            rows.append((name, train(run_dir, ["data=digits", "device=cpu", *overrides,
                                               *extra])))
            images.append(last_image(run_dir, "samples"))
    titles = [f"{name}\ntest {metrics['test_bpd']:.3f} bits/dim" for name, metrics in rows]
    save_panels(images, titles, REPO / "docs" / "digits_samples.png", across=True,
                panel_size=(5, 5.4), dpi=60, fontsize=13)
    print(setup_line(extra))
    print("| model | steps | parameters | test bpd | train bpd | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, metrics in rows:
        print(f"| {name} | {metrics['steps']} | {metrics['params']:,} | "
              f"{metrics['test_bpd']:.3f} | {metrics['train_bpd']:.3f} | "
              f"{metrics['wall_s']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
