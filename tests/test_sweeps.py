"""Sweeps: parallel jobs through Hydra's joblib launcher, folders named by their overrides,
and each run's hyperparameters and results in its own TensorBoard run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY_RUN, read_metrics, run_cli

from flowtrain.config import folder_name


def _hparams_records(run_dir: Path) -> tuple[dict, set[str]]:
    """The hyperparameters the run's own event files hold for the HParams tab, and the
    names of the metrics it declares."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    hyperparameters, metrics = {}, set()
    for path in (run_dir / "tb").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    for name, hparam in data.session_start_info.hparams.items():
                        kind = hparam.WhichOneof("kind")
                        hyperparameters[name] = getattr(hparam, kind)
                if data.HasField("experiment"):
                    metrics |= {info.name.tag for info in data.experiment.metric_infos}
    return hyperparameters, metrics


def test_parallel_sweep_names_folders_by_overrides_and_logs_hparams(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *TINY_RUN, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "optim.lr=1e-2,1e-3", "model.family=gaussian,logistic",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    folders = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    combinations = [(family, lr) for lr in ("0.01", "0.001")  # the sweep's order
                    for family in ("gaussian", "logistic")]
    assert len(folders) == 4
    for number, (folder, (family, lr)) in enumerate(zip(folders, combinations, strict=True)):
        # the job number, then every override of the job (Hydra's override_dirname)
        assert folder.startswith(f"{number}_") and "/" not in folder
        assert f",model.family={family}," in folder and f",optim.lr={lr}," in folder
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for folder, (family, lr) in zip(folders, combinations, strict=True):
        run_dir = sweep / folder
        assert read_metrics(run_dir)["steps"] == 40
        # the cores shared out between the two parallel jobs
        threads = max(1, (os.cpu_count() or 1) // 2)
        assert f"torch uses {threads} CPU thread(s)" in (run_dir / "flowtrain.log").read_text()
        hyperparameters, metrics = _hparams_records(run_dir)
        assert hyperparameters["model.family"] == family
        assert hyperparameters["optim.lr"] == float(lr)
        assert hyperparameters["train.steps"] == 40
        # what identifies a run, not every constant of the config
        assert hyperparameters["model"] == "mixture_cdf" and hyperparameters["train"] == "points"
        left_out = {"ckpt", "data._target_", "data.means", "seed", "resume"}
        assert not left_out & hyperparameters.keys()
        assert {"hparams/best_val_nll", "hparams/test_nll_at_best", "hparams/val_nll",
                "hparams/test_nll"} <= metrics
        assert not [key for key in metrics if "bpd" in key]
        # in the run's own folder, so the HParams tab links it to the run's curves
        assert not [path for path in (run_dir / "tb").iterdir() if path.is_dir()]
    # the sweep ends with its table, best first, beside multirun.yaml
    summary = json.loads((sweep / "summary.json").read_text())
    results = [read_metrics(sweep / row["folder"])["best_val_nll"] for row in summary]
    assert len(summary) == 4 and results == sorted(results)
    assert [row["best_val_nll"] for row in summary] == results
    assert {"test_nll_at_best", "test_nll", "best_step", "wall_s"} <= summary[0].keys()
    assert (sweep / "summary.csv").read_text().count("\n") == 5
    assert "sweep of 4 jobs, lowest best_val_nll first" in result.stdout


def test_sweep_folder_names_hold_no_path_separators():
    name = folder_name("data.path=/data/points.npz,optim.lr=0.01")
    assert "/" not in name and name == "data.path=_data_points.npz,optim.lr=0.01"
    assert len(folder_name("x=" + "a" * 500)) == 200


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the `slurm` extra
    out = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra",
                  "-p", "hydra.launcher", cwd=tmp_path).stdout
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in out
    assert "gpus_per_node: 1" in out and "partition: gpu" in out


TINY_TOY2D = ["data=toy2d", "data.name=rings", "model=arflow2d", "data.n_train=300",
              "data.n_val=100", "data.n_test=100", "train.steps=6", "train.batch_size=32",
              "train.eval_every=3", "train.sample_every=6", "train.checkpoint_every=6",
              "train.log_every=3", "train.n_samples=64"]


def test_an_optuna_study_searches_learning_rate_and_width(tmp_path):
    """hydra/sweeper=optuna with the preset search space: three trials, each a run whose
    best validation result is the trial's value; the study's best is printed and saved."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the `optuna` extra
    import yaml

    from flowtrain.search import WIDTHS

    sweep = tmp_path / "sweep"
    result = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                     "hydra.sweeper.sampler.seed=0", *TINY_TOY2D,
                     f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert (tmp_path / "study.db").stat().st_size > 0  # the study kept in a file
    studied = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 3
    values = []
    for metrics_file in runs:
        overrides = yaml.safe_load((metrics_file.parent / ".hydra" / "overrides.yaml")
                                   .read_text())
        chosen = dict(item.split("=", 1) for item in overrides)
        assert 1e-4 <= float(chosen["optim.lr"]) <= 1e-2
        assert int(chosen["model.hidden_features"]) in WIDTHS["hidden_features"]
        values.append(read_metrics(metrics_file.parent)["best_val_nll"])
    assert studied["best_value"] == pytest.approx(min(values))
    assert set(studied["best_params"]) == {"optim.lr", "model.hidden_features"}
    output = result.stdout + result.stderr
    assert "Best value" in output and "sweep of 3 jobs" in output
    assert "setup plugin alembic" not in output
    assert json.loads((sweep / "summary.json").read_text())[0]["best_val_nll"] == min(values)


def test_the_width_is_searched_only_where_the_model_has_one_and_nobody_fixed_it():
    optuna = pytest.importorskip("optuna")
    from omegaconf import OmegaConf

    from flowtrain.search import suggest_width

    def suggested(model: dict, fixed: dict) -> dict:
        trial = optuna.create_study().ask()
        for name, value in fixed.items():
            trial.set_user_attr(name, value)
        suggest_width(OmegaConf.create({"model": model}), trial)
        return trial.params

    assert set(suggested({"n_filters": 32}, {})) == {"model.n_filters"}
    assert suggested({"n_filters": 32}, {"model.n_filters": 8}) == {}
    assert set(suggested({"width": 64, "head_dim": 32}, {})) == {"model.width"}  # tarflow
    assert suggested({"n_components": 8}, {}) == {}  # mixture_cdf: no width


def test_a_diverged_job_does_not_end_the_sweep(tmp_path, monkeypatch):
    """Job 0's loss is made NaN at every step (as a learning rate far too high would): it
    ends, counted as inf (the worst result), and the sweep's other job still runs and the
    table is still made."""
    from hydra.core.hydra_config import HydraConfig

    import flowtrain.training.loop as loop

    real = loop.negative_log_likelihood

    def nan_in_job_0(*args, **kwargs):
        nll = real(*args, **kwargs)
        return nll * float("nan") if HydraConfig.get().job.num == 0 else nll

    monkeypatch.setattr(loop, "negative_log_likelihood", nan_in_job_0)
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *TINY_RUN, "optim.lr=1e-1,1e-2", "train.max_nonfinite=2",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert "this job diverged; the sweep goes on" in result.stdout + result.stderr
    summary = json.loads((sweep / "summary.json").read_text())
    assert len(summary) == 2
    finished, diverged = summary  # a job with results sorts before one without
    assert "optim.lr=0.01" in finished["overrides"] and finished["best_val_nll"] is not None
    assert "optim.lr=0.1" in diverged["overrides"] and diverged["steps"] is None
