"""Classifier-free guidance for class-conditional TarFlow on digits, through the real CLI:
trained as released for conditional runs (``model.drop_label=0.1``; apple/ml-tarflow
README.md) and without dropped labels, at the digits regime's 1500 steps of 64, uniform
dequantization. For each best.pt it reports the test bits/dim given the class and, at
each guidance weight, how often the classifier of ``conditional_digits.py`` reads a
sample drawn of class k as k (100 samples of each digit). Writes
docs/tarflow_guidance.json and docs/tarflow_guidance.png (the samples of the dropped-label
model at each weight) and prints the table for docs/RESULTS.md.

    uv run python scripts/tarflow_guidance.py [--weights 0,1,2,3] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cli_runs import markdown_table, run, save_panels, setup_line  # noqa: E402
from conditional_digits import PER_CLASS, SHOWN_PER_ROW, fitted_classifier  # noqa: E402

import flowtrain  # noqa: E402
from flowtrain.data.images import Digits  # noqa: E402
from flowtrain.training.figures import image_grid  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMON = ["data=digits", "dequant=uniform", "model=tarflow", "model.conditional=true"]
RUNS = {"drop_label=0.1": ["model.drop_label=0.1"], "drop_label=0": []}


def guided_accuracy(checkpoint: Path, classifier, guidance: float
                    ) -> tuple[float, torch.Tensor]:
    """(the share of samples read as their class at this guidance, SHOWN_PER_ROW samples
    of each digit)."""
    flow = flowtrain.load(checkpoint)
    right, shown = [], []
    for digit in range(10):
        samples = flow.sample(PER_CLASS, seed=digit, label=digit, guidance=guidance)
        right.append(float(np.mean(classifier.predict(samples.flatten(1).numpy()) == digit)))
        shown.append(samples[:SHOWN_PER_ROW])
    return float(np.mean(right)), torch.cat(shown)


def main(weights: list[float], extra: list[str]) -> None:
    data = Digits()
    classifier = fitted_classifier(data)
    results, panels = {}, []
    with tempfile.TemporaryDirectory() as folder:
        for name, options in RUNS.items():
            run_dir = Path(folder) / name.replace("=", "-")  # Hydra reads = in a value
            metrics = run(run_dir, [*COMMON, *options, *extra])
            best = run_dir / "checkpoints" / "best.pt"
            accuracy = {}
            for weight in weights:
                accuracy[weight], shown = guided_accuracy(best, classifier, weight)
                if name == "drop_label=0.1":
                    panels.append((image_grid(shown, data.levels, per_row=SHOWN_PER_ROW)
                                   .permute(1, 2, 0).numpy(),
                                   f"guidance {weight:g}\n{accuracy[weight]:.0%} read as "
                                   f"their class"))
                print(f"{name}, guidance {weight:g}: {accuracy[weight]:.1%}", flush=True)
            results[name] = {"metrics": metrics, "sample_class_accuracy": accuracy}
    save_panels([image for image, _ in panels], [title for _, title in panels],
                REPO / "docs" / "tarflow_guidance.png", across=True, panel_size=(3.2, 3.6),
                dpi=80, fontsize=11)
    (REPO / "docs" / "tarflow_guidance.json").write_text(json.dumps(
        {"setup": setup_line(extra), "weights": weights, "runs": results}, indent=2) + "\n")
    print(setup_line(extra))
    print(markdown_table(
        ["training", "test bpd given the class (best.pt)",
         *(f"read as their class, guidance {weight:g}" for weight in weights)],
        [[name, f"{result['metrics']['test_bpd_at_best']:.3f}",
          *(f"{result['sample_class_accuracy'][weight]:.1%}" for weight in weights)]
         for name, result in results.items()]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="0,1,2,3", help="comma-separated")
    arguments, overrides = parser.parse_known_args()
    main([float(weight) for weight in arguments.weights.split(",")], overrides)
