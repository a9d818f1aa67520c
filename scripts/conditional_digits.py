"""Class-conditional flows on digits: every image model trained as p(x | digit)
(``model.conditional=true``) and as p(x), at the digits regime's 1500 steps of 64, each at
its defaults, through the real CLI.

For each best.pt it reports the test bits/dim (the conditional one is -log p(x | y)) and
how often a classifier fitted on the training digits reads a sample drawn of class k as k
(100 samples of each digit through ``flowtrain.load(...).sample(n, label=k)``). For the
true distribution, knowing the class saves at most log2(10) bits an image, 0.052 bits/dim
on 8x8 digits: -log p(x | y) = -log p(x) + log p(y) - log p(y | x), with p(y) = 1/10 near
enough and p(y | x) <= 1; two learned models' difference can land on either side of it.

Writes docs/conditional_digits.png (the most class-accurate model's samples, one row per
digit), docs/conditional_digits_models.png (every model's) and
docs/conditional_comparison.json, and prints docs/RESULTS.md's table. Every run uses uniform
dequantization, so every bits/dim is the same discrete bound. ``--jobs 2`` trains two
runs at a time (each with one torch thread); ``--runs DIR`` keeps the runs, and a second
call reuses the finished ones:

    OMP_NUM_THREADS=1 uv run python scripts/conditional_digits.py --jobs 2 [overrides...]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cli_runs import run, save_panels, setup_line  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import flowtrain  # noqa: E402
from flowtrain.data.images import Digits  # noqa: E402
from flowtrain.training.figures import image_grid, save_picture  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMON = ["data=digits", "dequant=uniform"]
MODELS = ["realnvp", "glow", "pixelcnn_arflow", "flowpp", "tarflow"]
PER_CLASS, SHOWN_PER_ROW = 100, 10
# The most knowing the class can save on 8x8 digits with 10 classes.
GAIN_BOUND = math.log2(10) / 64


def fitted_classifier(data: Digits):
    """Logistic regression on the training digits' pixels: what reads a sample's class."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=5000)
    classifier.fit(data.train.flatten(1).numpy(), data.labels.train.numpy())
    return classifier


def class_accuracy(checkpoint: Path, classifier) -> tuple[float, list[float], torch.Tensor]:
    """(the share of samples read as the class they were drawn of, the share per class,
    SHOWN_PER_ROW samples of each class)."""
    flow = flowtrain.load(checkpoint)
    per_class, shown = [], []
    for digit in range(10):
        samples = flow.sample(PER_CLASS, seed=digit, label=digit)
        read_as = classifier.predict(samples.flatten(1).numpy())
        per_class.append(float(np.mean(read_as == digit)))
        shown.append(samples[:SHOWN_PER_ROW])
    return float(np.mean(per_class)), per_class, torch.cat(shown)


def trained(folder: Path, jobs: int, extra: list[str]) -> dict[tuple[str, bool], dict]:
    """Every (model, conditional) run's metrics, trained into ``folder``; a run that
    finished there before (its metrics.json) is read back, not trained again."""
    runs = [(model, conditional) for model in MODELS for conditional in (True, False)]

    def train(job: tuple[str, bool]) -> dict:
        model, conditional = job
        run_dir = folder / f"{model}-{conditional}"
        if (run_dir / "metrics.json").exists():
            config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
            return (json.loads((run_dir / "metrics.json").read_text())
                    | {"batch_size": config.train.batch_size})
        return run(run_dir, [*COMMON, *extra, f"model={model}",
                             f"model.conditional={str(conditional).lower()}"])

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(zip(runs, pool.map(train, runs), strict=True))


def main(jobs: int, runs: Path | None, extra: list[str]) -> None:
    data = Digits()
    classifier = fitted_classifier(data)
    ceiling = float(np.mean(classifier.predict(data.test.flatten(1).numpy())
                            == data.labels.test.numpy()))
    with tempfile.TemporaryDirectory() as temporary:
        folder = runs or Path(temporary)
        metrics = trained(folder, jobs, extra)
        results, grids = {}, {}
        for model in MODELS:
            conditional = metrics[(model, True)]
            best = folder / f"{model}-True" / "checkpoints" / "best.pt"
            accuracy, per_class, shown = class_accuracy(best, classifier)
            grids[model] = shown
            results[model] = {"conditional": conditional,
                              "unconditional": metrics[(model, False)],
                              "sample_class_accuracy": accuracy,
                              "sample_class_accuracy_per_class": per_class}
            print(f"{model}: {conditional['test_bpd_at_best']:.3f} bits/dim given the class, "
                  f"samples read as their class {accuracy:.1%}", flush=True)
    best_model = max(MODELS, key=lambda model: results[model]["sample_class_accuracy"])
    save_picture(image_grid(grids[best_model], data.levels, per_row=SHOWN_PER_ROW),
                 REPO / "docs" / "conditional_digits.png")
    titles = [f"{model}\n{results[model]['sample_class_accuracy']:.0%} read as their class"
              for model in MODELS]
    save_panels([image_grid(grids[model], data.levels, per_row=SHOWN_PER_ROW)
                 .permute(1, 2, 0).numpy() for model in MODELS], titles,
                REPO / "docs" / "conditional_digits_models.png", across=True,
                panel_size=(3.2, 3.6), dpi=80, fontsize=11)
    (REPO / "docs" / "conditional_comparison.json").write_text(json.dumps(
        {"setup": setup_line(extra), "classifier_test_accuracy": ceiling,
         "gain_bound_bpd": GAIN_BOUND, "shown": best_model, "models": results},
        indent=2) + "\n")
    print(setup_line(extra))
    print(f"classifier on the real test digits: {ceiling:.1%}; gain bound "
          f"{GAIN_BOUND:.3f} bits/dim; docs/conditional_digits.png shows {best_model}\n")
    print(table(results))


def table(results: dict) -> str:
    lines = ["| model | parameters (conditional) | test bpd, p(x) | "
             "test bpd, p(x \\| y) | gain | samples read as their class |",
             "| --- " * 6 + "|"]
    for model, result in results.items():
        conditional, unconditional = result["conditional"], result["unconditional"]
        gain = unconditional["test_bpd_at_best"] - conditional["test_bpd_at_best"]
        lines.append(f"| {model} | {conditional['params']:,} | "
                     f"{unconditional['test_bpd_at_best']:.3f} | "
                     f"{conditional['test_bpd_at_best']:.3f} | {gain:+.3f} | "
                     f"{result['sample_class_accuracy']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time")
    parser.add_argument("--runs", type=Path, default=None,
                        help="keep the runs in this folder (and reuse finished ones) "
                             "instead of a temporary one")
    arguments, overrides = parser.parse_known_args()
    main(arguments.jobs, arguments.runs, overrides)
