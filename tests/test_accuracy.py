"""The issue's accuracy bar, run through the real command."""

from __future__ import annotations

import pytest
from conftest import read_metrics, run_cli


@pytest.mark.parametrize("family", ["gaussian", "logistic"])
def test_1d_mixture_reaches_the_true_density(tmp_path, family):
    """3000 steps of batch 256: test NLL within 0.005 nats of the generating density's."""
    run_cli("train.steps=3000", "train.batch_size=256", f"model.family={family}",
            f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics["steps"] == 3000
    assert abs(metrics["test_nll"] - metrics["test_nll_true"]) < 0.005, metrics
