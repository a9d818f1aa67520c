"""Configs are found from the checkout and from a non-editable install in another folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, TINY_RUN, read_metrics, run_cli
from omegaconf import OmegaConf


def test_checkout_uses_its_conf_folder(tmp_path):
    out = run_cli("--info", "searchpath", cwd=tmp_path).stdout
    assert f"file://{REPO / 'conf'}" in out


def test_non_editable_install_runs_from_another_folder(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is needed to build and install the wheel")
    subprocess.run([uv, "build", "--wheel", "-q", "-o", str(tmp_path / "dist"), str(REPO)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("flowtrain-*.whl"))
    site = tmp_path / "site"
    subprocess.run([uv, "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel),
                    "--python", sys.executable], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first on the path; its dependencies come from this venv.
    env = {**os.environ, "PYTHONPATH": str(site)}

    def flowtrain(*args):
        return subprocess.run([str(site / "bin" / "flowtrain"), *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300, check=True)

    # --help in a real process of the console script (its content: test_cli.py)
    assert "train: images, points, small_images" in flowtrain("--help").stdout
    flowtrain(*TINY_RUN, "hydra.run.dir=run")
    assert read_metrics(elsewhere / "run")["steps"] == 40
    # The run composed its config from the installed copy: Hydra records where it looked
    # (what --info searchpath prints, without a third start of the script).
    hydra = OmegaConf.load(elsewhere / "run" / ".hydra" / "hydra.yaml").hydra
    searched = [source.path for source in hydra.runtime.config_sources]
    assert str(site / "flowtrain" / "conf") in searched
    assert str(REPO / "conf") not in searched
