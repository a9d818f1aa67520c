"""Glow's class prediction (the released conditional run's ``--weight_y=0.01``) on digits,
through the real CLI: class-conditional Glow trained with and without it, 1500 steps of
64, uniform dequantization. For each best.pt: the test bits/dim given the class, and how
often the classifier of ``conditional_digits.py`` reads a sample drawn of class k as k
(100 samples of each digit). Writes docs/glow_class_prediction.json and prints the
docs/RESULTS.md's table.

    uv run python scripts/glow_class_prediction.py [overrides...]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from cli_runs import markdown_table, run, setup_line
from conditional_digits import class_accuracy, fitted_classifier

from flowtrain.data.images import Digits

REPO = Path(__file__).resolve().parent.parent
COMMON = ["data=digits", "dequant=uniform", "model=glow", "model.conditional=true"]
WEIGHTS = [0.0, 0.01]


def main(extra: list[str]) -> None:
    classifier = fitted_classifier(Digits())
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for weight in WEIGHTS:
            run_dir = Path(folder) / f"weight-{weight}"
            metrics = run(run_dir, [*COMMON, f"model.weight_y={weight}", *extra])
            accuracy, _, _ = class_accuracy(run_dir / "checkpoints" / "best.pt", classifier)
            results[str(weight)] = {"metrics": metrics, "sample_class_accuracy": accuracy}
            print(f"weight_y={weight}: {metrics['test_bpd_at_best']:.3f} bits/dim, "
                  f"{accuracy:.1%} read as their class", flush=True)
    (REPO / "docs" / "glow_class_prediction.json").write_text(json.dumps(
        {"setup": setup_line(extra), "runs": results}, indent=2) + "\n")
    print(setup_line(extra))
    print(markdown_table(
        ["model.weight_y", "test bpd given the class (best.pt)", "samples read as their class"],
        [[weight, f"{result['metrics']['test_bpd_at_best']:.3f}",
          f"{result['sample_class_accuracy']:.1%}"] for weight, result in results.items()]))


if __name__ == "__main__":
    main(sys.argv[1:])
