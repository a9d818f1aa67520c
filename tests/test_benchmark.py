"""The benchmark's sets are built offline with fixed splits, and scripts/benchmark.py writes
its table, summary and resumable results from real (tiny) runs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import REPO, run_cli

from flowtrain.data.array import ImageArrayData
from flowtrain.data.benchmark_sets import SETS, write_set

sys.path.insert(0, str(REPO / "scripts"))
import benchmark  # noqa: E402
import cli_runs  # noqa: E402


@pytest.mark.parametrize("name, shape, n_images, n_train_at_least", [
    ("mnist28", (1, 28, 28), 5000, 4000), ("photos32", (3, 32, 32), 2816, 2000)])
def test_each_set_is_built_offline_with_fixed_splits(tmp_path, name, shape, n_images,
                                                     n_train_at_least):
    path = write_set(name, tmp_path / "first")
    again = write_set(name, tmp_path / "second")
    first, second = np.load(path), np.load(again)
    for split in ("train", "test"):
        assert np.array_equal(first[split], second[split])  # the same split every time
    assert len(first["test"]) == SETS[name].n_test
    assert len(first["train"]) + len(first["test"]) == n_images
    data = ImageArrayData(str(path), n_val=SETS[name].n_val)  # as the benchmark reads it
    assert tuple(data.event_shape) == shape and data.levels == 256
    assert len(data.train) >= n_train_at_least and len(data.val) == SETS[name].n_val
    assert int(data.train.max()) == 255 and int(data.train.min()) == 0


@pytest.fixture
def in_process(monkeypatch, tmp_path):
    """The benchmark's runs through the CLI in this process (the script starts one Python
    process each), tiny."""
    def train(run_dir, overrides):
        run_cli(f"hydra.run.dir={run_dir}", *overrides, "model.n_filters=4", cwd=tmp_path)
        return json.loads((run_dir / "metrics.json").read_text())

    monkeypatch.setattr(cli_runs, "train", train)
    monkeypatch.setattr(cli_runs, "CALIBRATION_STEPS", 4)  # the equal-time probe's steps


def test_the_script_writes_its_table_and_summary_and_resumes(in_process, tmp_path):
    files = {"--results": tmp_path / "benchmark.json", "--table": tmp_path / "RESULTS.md",
             "--summary": tmp_path / "README.md"}
    files["--summary"].write_text("# readme\n")
    words = ["--sets", "digits", "--models", "realnvp,glow", "--steps", "4", "--batch", "8",
             "--runs", str(tmp_path / "runs"), *(str(item) for pair in files.items()
                                                 for item in pair)]
    benchmark.main(words)
    results = json.loads(files["--results"].read_text())
    assert set(results["runs"]) == {"digits/realnvp/steps", "digits/glow/steps",
                                    "digits/glow/time"}
    assert results["budget"] == {"steps": 4, "batch": 8} and results["commit"]
    row = results["runs"]["digits/glow/steps"]
    assert row["steps"] == 4 and row["train_samples_per_s"] > 0 and row["best_step"] >= 1
    table = files["--table"].read_text()
    assert "| digits | glow |" in table and "no GPU" in table
    readme = files["--summary"].read_text()
    assert readme.startswith("# readme\n") and "| model | digits |" in readme
    # --resume trains nothing that is saved, and refuses another budget
    benchmark.main([*words, "--resume"])
    assert json.loads(files["--results"].read_text())["runs"] == results["runs"]
    with pytest.raises(SystemExit, match="leave --resume out"):
        benchmark.main([*words, "--resume", "--steps", "5"])
