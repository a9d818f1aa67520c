"""Train model=arflow2d on every 2-D toy set with the default config, through the real CLI,
then write docs/toy2d.png (the density figures stacked) and print a markdown results table.

    uv run python scripts/toy2d_gallery.py [extra overrides...]
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

NAMES = ["moons", "rings", "eight_gaussians", "checkerboard", "image"]
REPO = Path(__file__).resolve().parent.parent


def last_image(run_dir: Path, tag: str):
    accumulator = EventAccumulator(str(run_dir / "tb"))
    accumulator.Reload()
    return mpimg.imread(io.BytesIO(accumulator.Images(tag)[-1].encoded_image_string))


def main(extra: list[str]) -> None:
    rows, images = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in NAMES:
            run_dir = Path(folder) / name
            result = subprocess.run(
                [sys.executable, "-m", "flowtrain", "model=arflow2d", "data=toy2d",
                 f"data.name={name}", "device=cpu", f"hydra.run.dir={run_dir}", *extra],
                capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"data.name={name} failed:\n{result.stdout}\n{result.stderr}")
            metrics = json.loads((run_dir / "metrics.json").read_text())
            rows.append((name, metrics))
            images.append(last_image(run_dir, "density"))
    figure, axes = plt.subplots(len(images), 1, figsize=(16, 4.2 * len(images)))
    for axis, image, name in zip(axes, images, NAMES, strict=True):
        axis.imshow(image)
        axis.set_axis_off()
        axis.set_title(name, fontsize=16, loc="left")
    figure.tight_layout()
    figure.savefig(REPO / "docs" / "toy2d.png", dpi=40)
    print(f"Device: CPU ({os.cpu_count()} cores), torch {torch.__version__}. "
          f"Overrides: {extra or 'none'}.")
    print("| data.name | steps | test NLL (nats) | true test NLL | gap | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, metrics in rows:
        true = metrics.get("test_nll_true")
        gap = "" if true is None else f"{metrics['test_nll'] - true:.4f}"
        true_text = "no closed form" if true is None else f"{true:.4f}"
        print(f"| {name} | {metrics['steps']} | {metrics['test_nll']:.4f} | {true_text} | {gap} "
              f"| {metrics['wall_s']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
