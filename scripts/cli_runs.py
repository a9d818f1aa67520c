"""What the gallery scripts share: train through the real CLI, read back what a run wrote."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def train(run_dir: Path, overrides: list[str]) -> dict:
    """Run ``flowtrain`` with these overrides into run_dir; its metrics.json, or exit with
    the run's output when it fails."""
    result = subprocess.run([sys.executable, "-m", "flowtrain", f"hydra.run.dir={run_dir}",
                             *overrides], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"flowtrain {' '.join(overrides)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads((run_dir / "metrics.json").read_text())


def run(run_dir: Path, overrides: list[str]) -> dict:
    """``train``'s metrics with the run's batch size (from the config it saved) added."""
    from omegaconf import OmegaConf

    metrics = train(run_dir, overrides)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return metrics | {"batch_size": config.train.batch_size}


def training_seconds(metrics: dict) -> float:
    """Seconds a run spent in training steps alone (no evaluations, no pictures)."""
    return metrics["steps"] * metrics["batch_size"] / metrics["train_samples_per_s"]


CALIBRATION_STEPS = 40


def steps_in(seconds: float, run_dir: Path, overrides: list[str]) -> int:
    """How many steps of this run fit in ``seconds`` of training, from a short timing run
    (``CALIBRATION_STEPS`` steps, one sample) into ``run_dir``."""
    probe = run(run_dir, [*overrides, "train.n_samples=1", f"train.steps={CALIBRATION_STEPS}"])
    return round(seconds * probe["train_samples_per_s"] / probe["batch_size"])


def selection(metrics: dict, per_dim: str = "bpd", digits: int = 3) -> str:
    """"1.905 (step 1500) | 1.912 | 1.912": best.pt's validation result and step, its test
    result, and the last model's test result, as three table cells."""
    return (f"{metrics[f'best_val_{per_dim}']:.{digits}f} (step {metrics['best_step']}) | "
            f"{metrics[f'test_{per_dim}_at_best']:.{digits}f} | "
            f"{metrics[f'test_{per_dim}']:.{digits}f}")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A results table as docs/RESULTS.md writes them."""
    lines = ["| " + " | ".join(headers) + " |", "| --- " * len(headers) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def fill_between_markers(path: Path, markers: tuple[str, str], body: str) -> None:
    """``body`` between the two ``markers`` in ``path`` (docs/RESULTS.md, the README), or
    after its end the first time: how a script puts its table where a page shows it."""
    start, end = markers
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body}\n{end}"
    if start in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def setup_line(overrides: list[str]) -> str:
    """Where the numbers of a results table came from."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"Device: CPU ({cores} of {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads), torch {torch.__version__}. "
            f"Overrides: {overrides or 'none'}.")


def save_panels(images: list[np.ndarray], titles: list[str], path: Path, *, across: bool,
                panel_size: tuple[float, float], dpi: int, **title_style) -> None:
    """One picture of the panels side by side (``across``) or stacked, each titled."""
    import matplotlib.pyplot as plt

    shape = (1, len(images)) if across else (len(images), 1)
    width, height = panel_size
    figure, axes = plt.subplots(*shape, figsize=(width * shape[1], height * shape[0]))
    for axis, image, title in zip(axes, images, titles, strict=True):
        axis.imshow(image)
        axis.set_axis_off()
        axis.set_title(title, **title_style)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(figure)


def compare(runs: dict[str, list[str]], common: list[str], figure: Path
            ) -> list[tuple[str, dict]]:
    """Train every run (its overrides after ``common``) in a temporary folder, put their
    last sample grids side by side in ``figure``, and return (name, metrics) per run."""
    rows, images = [], []
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, overrides) in enumerate(runs.items()):
            run_dir = Path(folder) / str(index)
            rows.append((name, train(run_dir, [*common, *overrides])))
            images.append(last_image(run_dir, "samples"))
    titles = [f"{name}\ntest {metrics['test_bpd']:.3f} bits/dim (last model)"
              for name, metrics in rows]
    save_panels(images, titles, figure, across=True, panel_size=(5, 5.4), dpi=60,
                fontsize=13)
    return rows


def last_image(run_dir: Path, tag: str) -> np.ndarray:
    """The last picture a run logged under this TensorBoard tag."""
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    accumulator.Reload()
    return mpimg.imread(io.BytesIO(accumulator.Images(tag)[-1].encoded_image_string))


def equal_budget_runs(models: list[str], common: list[str], runs: Path,
                      after_run=None) -> tuple[list, list, list]:
    """Each model at its defaults for the regime's steps, then at the first model's training
    seconds (each other model timed on a short run first and given the steps that fit).
    ``after_run(model, run_dir, metrics)`` may add to an equal-step run's metrics. Returns
    the equal-step and equal-time (name, metrics) rows and the equal-step runs' last sample
    grids."""
    equal_steps, equal_time, images = [], [], []
    for model in models:
        metrics = run(runs / model, [*common, f"model={model}"])
        if after_run is not None:
            after_run(model, runs / model, metrics)
        equal_steps.append((model, metrics))
        images.append(last_image(runs / model, "samples"))
        print(f"{model}: {metrics['test_bpd_at_best']:.3f} bits/dim", flush=True)
    seconds = training_seconds(equal_steps[0][1])
    equal_time.append(equal_steps[0])
    for model in models[1:]:
        overrides = [*common, f"model={model}"]
        steps = steps_in(seconds, runs / f"probe-{model}", overrides)
        equal_time.append((model, run(runs / f"{model}-timed",
                                      [*overrides, f"train.steps={steps}"])))
    return equal_steps, equal_time, images


def save_comparison(name: str, equal_steps: list, equal_time: list, images: list,
                    extra: list[str], repo: Path) -> None:
    """docs/NAME_digits_samples.png (the equal-step runs' grids side by side) and
    docs/NAME_comparison.json."""
    titles = [f"{model}: {metrics['steps']} steps\ntest {metrics['test_bpd_at_best']:.3f} "
              f"bits/dim (best.pt)" for model, metrics in equal_steps]
    save_panels(images, titles, repo / "docs" / f"{name}_digits_samples.png", across=True,
                panel_size=(3.2, 3.6), dpi=80, fontsize=11)
    (repo / "docs" / f"{name}_comparison.json").write_text(json.dumps(
        {"setup": setup_line(extra), "equal_steps": dict(equal_steps),
         "equal_time": dict(equal_time)}, indent=2) + "\n")
