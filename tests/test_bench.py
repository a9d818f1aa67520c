"""The benchmark script keeps working: its baseline computes flowtrain's RealNVP density,
and a row has every field the table needs."""

from __future__ import annotations

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
