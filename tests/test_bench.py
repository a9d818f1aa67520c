"""The benchmark script keeps working: its baseline computes flowtrain's RealNVP density,
and a row has every field the table needs."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench  # noqa: E402


def test_plain_baseline_gives_the_same_log_density():
    bench.check_baseline_agrees(torch.device("cpu"))  # exits with a message if not


@pytest.mark.parametrize("model_name", ["plain_realnvp", "realnvp"])
def test_a_benchmark_row_has_every_field(model_name):
    row = bench.measure(model_name, "channels_last", "small", batch=2, steps=1,
                        device=torch.device("cpu"))
    assert row["train_images_per_s"] > 0 and row["peak_memory_mb"] > 0
    assert row["shape"] == "1x28x28" and row["mode"] == "channels_last"
    table = bench.markdown([{**row, "model": "plain_realnvp", "mode": "eager"}, row],
                           torch.device("cpu"))
    assert "| plain_realnvp | small (1x28x28) | eager | 2 |" in table


def test_a_known_peak_gives_the_utilization_column():
    row = bench.measure("realnvp", "eager", "small", batch=2, steps=1,
                        device=torch.device("cpu"), given_peak=1.0)
    assert row["train_gflop_per_image"] > 0.1  # RealNVP's convolutions, forward and back
    assert row["mfu"] == pytest.approx(row["achieved_tflops"], rel=1e-2)
    assert f"| {row['mfu']:.1%} |" in bench.markdown([row], torch.device("cpu"))


def test_written_rows_replace_their_namesakes_and_keep_the_rest(tmp_path):
    saved = tmp_path / "benchmarks.json"
    old = [{"size": size, "model": "realnvp", "mode": "eager", "train_images_per_s": 1.0}
           for size in ("full", "small")]
    saved.write_text(json.dumps({"device": "here", "rows": old}))
    new = {"size": "small", "model": "realnvp", "mode": "eager", "train_images_per_s": 2.0}
    merged = bench.merged_rows(saved, [new], "here")
    assert [(row["size"], row["train_images_per_s"]) for row in merged] == [
        ("small", 2.0), ("full", 1.0)]
    assert bench.merged_rows(saved, [new], "another device") == [new]


def test_the_networks_only_ceiling_runs_the_same_convolutions():
    rows = {name: bench.measure(name, "eager", "small", batch=2, steps=1,
                                device=torch.device("cpu"))
            for name in ("realnvp", "realnvp_networks_only")}
    ours, ceiling = (rows[name]["train_gflop_per_image"]
                     for name in ("realnvp", "realnvp_networks_only"))
    # the first coupling's input needs no gradient inside the flow: slightly fewer there
    assert 0.97 * ceiling <= ours <= ceiling
