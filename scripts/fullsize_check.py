"""RealNVP at the seed's full size (128 filters, 8 residual blocks) on 3x32x32 images:
train N steps through the real CLI and report whether every logged loss was finite.

    uv run python scripts/fullsize_check.py [--steps 100] [--batch-size 4] [overrides...]

The images are scikit-learn's digits scaled up to 32x32 and tinted into three channels,
so the check runs offline. On a CPU use a small batch: one step at batch 64 costs about
10 TFLOP at this size.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits


def colour_digits_32(n: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    digits = load_digits().images[:n] / 16.0  # [n, 8, 8] in [0, 1]
    large = np.kron(digits, np.ones((4, 4)))  # [n, 32, 32]
    tint = generator.uniform(0.3, 1.0, size=(n, 3, 1, 1))
    return np.clip(np.round(large[:, None] * tint * 255), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as folder:
        images = colour_digits_32(1200, seed=0)
        np.savez(Path(folder) / "digits32.npz", train=images[:1000], test=images[1000:])
        run_dir = Path(folder) / "run"
        started = time.perf_counter()
        subprocess.run([
            sys.executable, "-m", "flowtrain", "model=realnvp", "model.n_filters=128",
            "model.n_blocks=8", "data=image_array",
            f"data.path={Path(folder) / 'digits32.npz'}",
            f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
            f"train.eval_every={args.steps}", f"train.sample_every={args.steps}",
            f"train.checkpoint_every={args.steps}", "train.log_every=1",
            "train.eval_batch_size=50", f"hydra.run.dir={run_dir}", *overrides,
        ], check=True)
        seconds = time.perf_counter() - started
        metrics = json.loads((run_dir / "metrics.json").read_text())
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        accumulator.Reload()
        losses = [event.value for event in accumulator.Scalars("train/nll")]
    finite = all(math.isfinite(value) for value in losses)
    print(json.dumps({
        "steps": metrics["steps"], "batch_size": args.batch_size, "params": metrics["params"],
        "logged_losses": len(losses), "all_finite": finite,
        "first_train_bpd": losses[0] / (3 * 32 * 32 * math.log(2)),
        "test_bpd": metrics["test_bpd"], "wall_s": round(seconds, 1),
        "device": metrics["device"], "torch": torch.__version__,
    }, indent=2))
    sys.exit(0 if finite else 1)


if __name__ == "__main__":
    main()
