"""The benchmark that chooses every image model's defaults: each image model at its
defaults on each set (the 8x8 digits, 5,000 MNIST digits at 28x28, 2,816 tiles of colour
photographs at 32x32; flowtrain/data/benchmark_sets.py), through the real CLI,

  (a) for equal steps: 1,200 steps of 32 images, and
  (b) for equal training time: RealNVP's training seconds at (a) on that set (each other
      model is timed on a short run first and given the steps that fit),

beside the reference the defaults must reach: RealNVP at 32 filters and 2 blocks with
the seed's block (``residual_block=bottleneck``). Each finished run is saved at once in
docs/benchmark.json (a stopped benchmark goes on where it stopped with --resume), and
the table (test bits/dim of best.pt, train bits/dim, images/s, best step) is written
into docs/RESULTS.md with the date, machine and commit, and its summary (test bits/dim
at equal steps, a model a row and a set a column) into the README.

    uv sync --extra benchmark
    uv run python scripts/benchmark.py                       # everything (hours on a CPU)
    uv run python scripts/benchmark.py --sets mnist28 --models realnvp,glow --resume

Every run uses all the machine's cores (torch's default threads); run nothing else beside
it, since images/s and the equal-time budget are measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from cli_runs import fill_between_markers, markdown_table, run, steps_in, training_seconds

from flowtrain.data.benchmark_sets import SETS, write_set

REPO = Path(__file__).resolve().parent.parent
TABLE = "<!-- benchmark table: scripts/benchmark.py -->", "<!-- end of benchmark table -->"
SUMMARY = ("<!-- benchmark summary: scripts/benchmark.py -->",
           "<!-- end of benchmark summary -->")

REFERENCE = "realnvp_seed_block"
MODELS = {
    "realnvp": ["model=realnvp"],
    REFERENCE: ["model=realnvp", "model.n_filters=32", "model.n_blocks=2",
                "model.residual_block=bottleneck"],
    "glow": ["model=glow"],
    "pixelcnn_arflow": ["model=pixelcnn_arflow"],
    "flowpp": ["model=flowpp"],
    "tarflow": ["model=tarflow"],
}
TIMED_BY = "realnvp"  # whose training seconds at (a) are (b)'s budget


def set_overrides(name: str, data_folder: Path) -> list[str]:
    """How flowtrain reads a set: the digits by name, the others as users' own arrays."""
    if name == "digits":
        return ["data=digits"]
    return ["data=image_array", f"data.path={write_set(name, data_folder)}",
            f"data.n_val={SETS[name].n_val}"]


def common(steps: int, batch: int) -> list[str]:
    """The budget, and the same validation points for every model and set."""
    every = max(1, steps // 6)
    return [f"train.steps={steps}", f"train.batch_size={batch}", f"train.eval_every={every}",
            f"train.checkpoint_every={every}", f"train.sample_every={steps}",
            "train.n_samples=16"]


def row_of(metrics: dict) -> dict:
    """What the tables need of a run, and where it ran: equal-time budgets compare
    seconds, so every run of a benchmark must come from one machine."""
    keep = ("steps", "test_bpd_at_best", "test_bpd", "train_bpd", "best_step",
            "train_samples_per_s", "params", "dequant_params", "wall_s", "device")
    return {key: metrics.get(key) for key in keep} | {
        "train_seconds": training_seconds(metrics), "machine": machine(),
        "commit": commit()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores, {gpu}"


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def load_results(path: Path, resume: bool, steps: int, batch: int) -> dict:
    """The runs saved at ``path`` (with ``resume``, for the same budget), or none."""
    budget = {"steps": steps, "batch": batch}
    if not (resume and path.exists()):
        return {"budget": budget, "runs": {}}
    results = json.loads(path.read_text())
    if results.get("budget") != budget:
        sys.exit(f"{path} holds runs of {results.get('budget')}, not {budget}: leave "
                 f"--resume out to start again")
    for row in results["runs"].values():  # rows saved before runs named their own
        row.setdefault("machine", results.get("machine"))
        row.setdefault("commit", results.get("commit"))
    elsewhere = {row["machine"] for row in results["runs"].values()} - {machine()}
    if elsewhere:
        sys.exit(f"{path} holds runs from {sorted(map(str, elsewhere))}, and this is "
                 f"{machine()}: equal-time budgets would compare two machines. Give "
                 f"--results another file, or leave --resume out to start again.")
    return results


def save_results(results: dict, path: Path) -> None:
    commits = sorted({row.get("commit") or commit() for row in results["runs"].values()})
    results |= {"date": datetime.date.today().isoformat(), "machine": machine(),
                "commit": ", ".join(commits) or commit()}
    path.write_text(json.dumps(results, indent=2) + "\n")


def run_benchmark(sets: list[str], models: list[str], steps: int, batch: int,
                  budgets: list[str], runs: Path, results: dict, save) -> dict:
    """Train what ``results`` lacks, handing ``results`` to ``save`` after every run."""
    done = results["runs"]
    for set_name in sets:
        data = set_overrides(set_name, runs / "data")
        for budget in budgets:
            for model in models:
                key = f"{set_name}/{model}/{budget}"
                if key in done or (budget == "time" and model == TIMED_BY):
                    continue  # the timing model's equal-time run is its equal-step run
                overrides = [*data, *common(steps, batch), *MODELS[model]]
                if budget == "time":
                    reference = done.get(f"{set_name}/{TIMED_BY}/steps")
                    if reference is None:
                        sys.exit(f"{key} needs {set_name}/{TIMED_BY}/steps first")
                    fit = steps_in(reference["train_seconds"], runs / "probe" / key, overrides)
                    overrides = [*data, *common(fit, batch), *MODELS[model]]
                print(f"{key}: training", flush=True)
                done[key] = row_of(run(runs / set_name / f"{model}-{budget}", overrides))
                print(f"{key}: {done[key]['test_bpd_at_best']:.3f} bits/dim", flush=True)
                save(results)
    return results


def table(results: dict) -> str:
    """One row per model and set: both budgets side by side."""
    runs = results["runs"]
    headers = ["set", "model", "test bpd (best.pt)", "train bpd", "images/s",
               "best step", "equal time: steps", "test bpd (best.pt)", "best step"]
    rows = []
    set_names = [name for name in ("digits", *SETS) if any(key.startswith(f"{name}/")
                                                           for key in runs)]
    for set_name in set_names:
        for model in MODELS:
            steps = runs.get(f"{set_name}/{model}/steps")
            if steps is None:
                continue
            timed = steps if model == TIMED_BY else runs.get(f"{set_name}/{model}/time")
            rows.append([set_name, model, f"{steps['test_bpd_at_best']:.3f}",
                         f"{steps['train_bpd']:.3f}", f"{steps['train_samples_per_s']:.0f}",
                         str(steps["best_step"]),
                         *((str(timed["steps"]), f"{timed['test_bpd_at_best']:.3f}",
                            str(timed["best_step"])) if timed else ("-", "-", "-"))])
    return markdown_table(headers, rows)


def summary(results: dict) -> str:
    """The README's table: test bits/dim of best.pt at equal steps, a model a row and a
    set a column, the best of each set in bold."""
    runs = results["runs"]
    set_names = [name for name in ("digits", *SETS)
                 if any(key.startswith(f"{name}/") for key in runs)]
    scores = {(set_name, model): runs[f"{set_name}/{model}/steps"]["test_bpd_at_best"]
              for set_name in set_names for model in MODELS
              if f"{set_name}/{model}/steps" in runs}
    best = {set_name: min(value for (name, _), value in scores.items() if name == set_name)
            for set_name in set_names}
    rows = []
    for model in MODELS:
        if not any((set_name, model) in scores for set_name in set_names):
            continue
        cells = []
        for set_name in set_names:
            value = scores.get((set_name, model))
            text = "-" if value is None else f"{value:.3f}"
            cells.append(f"**{text}**" if value is not None and value == best[set_name]
                         else text)
        rows.append([model, *cells])
    return markdown_table(["model", *set_names], rows)


def source_line(results: dict) -> str:
    return (f"Measured {results['date']} on {results['machine']}, torch's default threads, "
            f"commit {results['commit']}; {results['budget']['steps']} steps of "
            f"{results['budget']['batch']}.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(["digits", *SETS]))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--budgets", default="steps,time")
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "benchmark")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "benchmark.json")
    parser.add_argument("--table", type=Path, default=REPO / "docs" / "RESULTS.md")
    parser.add_argument("--summary", type=Path, default=REPO / "README.md")
    parser.add_argument("--resume", action="store_true",
                        help="keep docs/benchmark.json's runs and train only what it lacks")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS)) + sorted(
        set(args.sets.split(",")) - {"digits", *SETS})
    if unknown:
        parser.error(f"unknown {unknown}; models: {', '.join(MODELS)}; sets: digits, "
                     f"{', '.join(SETS)}")
    if "time" in args.budgets.split(",") and TIMED_BY not in models:
        models.insert(0, TIMED_BY)  # its equal-step run sets the time budget
    results = run_benchmark(args.sets.split(","), models, args.steps, args.batch,
                            args.budgets.split(","), args.runs,
                            load_results(args.results, args.resume, args.steps, args.batch),
                            save=lambda results: save_results(results, args.results))
    fill_between_markers(args.table, TABLE, f"{source_line(results)} Every run's numbers: "
                            f"docs/benchmark.json.\n\n{table(results)}")
    fill_between_markers(args.summary, SUMMARY, f"{summary(results)}\n\n{source_line(results)}")
    print(table(results))


if __name__ == "__main__":
    main()
