"""Build a run's components from its composed config, through ``_target_`` alone.

Adding a model, data set or dequantizer is a class and a YAML file; nothing here changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from flowtrain.checkpoint_config import check_same_setup
from flowtrain.class_labels import class_rows
from flowtrain.data.base import LABELLED_DATA_SETS, FlowData
from flowtrain.errors import CheckpointError, ConfigError
from flowtrain.flows.base import Bijection, FlowModel
from flowtrain.likelihood import Identity, Preprocessing, Standardize
from flowtrain.training.average import WeightAverage
from flowtrain.training.batches import BatchStream
from flowtrain.training.checkpoint import (
    check_state_dict_matches,
    evaluated_weights,
    load_checkpoint,
)
from flowtrain.training.distributed import Ranks
from flowtrain.training.loop import Trainer
from flowtrain.training.optim import build_optimizer, build_scheduler
from flowtrain.training.runtime import seed_everything, select_device
from flowtrain.training.state import TrainingState

log = logging.getLogger(__name__)


def resume_path(resume: object, run_dir: Path) -> Path | None:
    """false -> None; true -> this run folder's last.pt; a path -> that file."""
    if resume is None or resume is False or str(resume).lower() in ("false", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        return run_dir / "checkpoints" / "last.pt"
    return Path(str(resume)).expanduser()


def is_conditional(cfg: DictConfig) -> bool:
    """Whether the config's model is class-conditional (model.conditional=true)."""
    return bool(cfg.model.get("conditional", False))


def conditioning_classes(cfg: DictConfig, data: FlowData) -> tuple[str, ...] | None:
    """The class names a conditional model is built for (None for an unconditional one);
    data without labels is refused here, before anything trains."""
    if not is_conditional(cfg):
        return None
    if data.labels is None:
        why = f" ({data.unlabelled_because})" if data.unlabelled_because else ""
        raise ConfigError(f"model.conditional=true models p(x | class), and {data.name} has "
                          f"no class labels{why}. Use a labelled data set "
                          f"({LABELLED_DATA_SETS}), or leave model.conditional=false.")
    return tuple(data.labels.classes)


def build_flow(cfg: DictConfig, data: FlowData, device: torch.device
               ) -> tuple[FlowModel, Preprocessing]:
    """The model and the data-to-model-space preprocessing the config names, for ``data``:
    what training builds and what a checkpoint is loaded into."""
    standardize = Standardize.fit(data.train) if data.standardize else Identity()
    classes = conditioning_classes(cfg, data)
    return build_for_shape(cfg, tuple(data.event_shape), data.levels, standardize, device,
                           n_classes=len(classes or ()))


def build_for_shape(cfg: DictConfig, event_shape: tuple[int, ...], levels: int | None,
                    standardize: Bijection, device: torch.device, n_classes: int = 0
                    ) -> tuple[FlowModel, Preprocessing]:
    """The config's model and preprocessing for examples of ``event_shape`` with ``levels``
    (None: continuous), without the data: what a checkpoint alone can rebuild. A
    conditional model is built for ``n_classes`` classes."""
    classes = {"n_classes": n_classes} if is_conditional(cfg) else {}
    model: FlowModel = instantiate(cfg.model, event_shape=event_shape, **classes).to(device)
    dequantizer = instantiate(cfg.dequant, levels=levels, event_shape=event_shape)
    return model, Preprocessing(dequantizer, standardize).to(device)


def load_weights(model: FlowModel, preprocessing: Preprocessing, saved: dict, path: Path,
                 fix: str) -> None:
    """The checkpoint's evaluated weights (its average, when the run kept one) into
    ``model`` and ``preprocessing``, each part checked to fit before anything is loaded."""
    weights = evaluated_weights(saved)
    for module, what in ((model, "model"), (preprocessing, "preprocessing")):
        if not isinstance(weights.get(what), dict):
            raise CheckpointError(f"{path} holds no {what} weights.")
        check_state_dict_matches(module, weights[what], what, path, fix=fix)
    for module, what in ((model, "model"), (preprocessing, "preprocessing")):
        try:
            module.load_state_dict(weights[what])
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: the {what} weights could not be loaded: "
                                  f"{error}") from error


def build_trainer(cfg: DictConfig, run_dir: Path, resume_command: str = "",
                  ranks: Ranks | None = None, choices: dict[str, str] | None = None,
                  hyperparameters: dict[str, Any] | None = None) -> Trainer:
    """``choices``: the option picked in each config group (Hydra's runtime choices),
    saved in the checkpoints so that ``task=eval`` composes against the same options.
    ``hyperparameters``: what identifies the run in TensorBoard's HParams tab."""
    ranks = ranks or Ranks()
    # The same seed on every rank: identical initial weights and one global batch order.
    seed_everything(cfg.seed)
    device = ranks.device(select_device(cfg.device))
    ranks.start(device, cfg.train.dist_timeout_s)
    ranks.check_same(str(run_dir), "run folder",
                     "pin hydra.run.dir=..., or start torchrun with --standalone or "
                     "--rdzv-id so that all ranks share outputs/torchrun/ID.")
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    # A missing, corrupt or foreign checkpoint is refused before any data is read.
    checkpoint = resume_path(cfg.resume, run_dir)
    saved = load_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is not None:
        check_same_setup(saved.get("config", {}), config, checkpoint)
    with ranks.main_first():  # one download, not one per rank
        data: FlowData = instantiate(cfg.data)
    if saved is not None:
        check_same_classes(saved, data, checkpoint)
    model, preprocessing = build_flow(cfg, data, device)
    check_sample_classes(cfg.train.sample_classes, model, data)
    n_model = sum(parameter.numel() for parameter in model.parameters())
    n_dequantizer = sum(parameter.numel() for parameter in preprocessing.parameters())
    log.info("%s on %s %s: %s parameters%s", type(model).__name__, data.name,
             "x".join(map(str, data.event_shape)), f"{n_model:,}",
             f" ({n_model + n_dequantizer:,} with the dequantizer)" if n_dequantizer else "")
    if preprocessing.dequantizer.bits_per_dim_caveat:
        log.warning(preprocessing.dequantizer.bits_per_dim_caveat)
    # A learned dequantizer trains with the model, on the same loss.
    optimizer = build_optimizer(cfg.optim, [*model.named_parameters(prefix="model"),
                                            *preprocessing.named_parameters(
                                                prefix="preprocessing")])
    state = TrainingState(
        model=model,
        preprocessing=preprocessing,
        optimizer=optimizer,
        # an epoch as the released TarFlow counts it: full batches (drop_last)
        scheduler=build_scheduler(cfg.optim, optimizer, cfg.train.steps,
                                  steps_per_epoch=max(1, len(data.train)
                                                      // cfg.train.batch_size)),
        batches=BatchStream(data.train, cfg.train.batch_size, seed=cfg.seed,
                            hflip=data.hflip, shift=data.shift,
                            labels=data.labels.train if model.n_classes else None),
        device=device,
        # Copied before the trainer compiles the model, and before any checkpoint is loaded.
        average=(WeightAverage({"model": model, "preprocessing": preprocessing},
                               cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None),
        extra={"config": config, "choices": dict(choices or {}),
               "data_shape": {"event_shape": list(data.event_shape), "levels": data.levels,
                              **({"classes": list(data.labels.classes)}
                                 if model.n_classes else {})}},
    )
    if saved is not None:
        restore(state, saved, checkpoint)
        log.info("resumed from %s at step %d", checkpoint, state.step)
        if state.average is not None and "average" not in saved:
            log.warning("%s holds no weight average (train.ema_decay was 0); the average "
                        "starts from the resumed weights", checkpoint)
    return Trainer(state, data, cfg.train, run_dir, device, seed=cfg.seed,
                   resume_command=resume_command, ranks=ranks,
                   hyperparameters=hyperparameters)


def check_sample_classes(chosen: list | None, model: FlowModel, data: FlowData) -> None:
    """``train.sample_classes`` checked before training, not at the first sample grid."""
    if not chosen:
        return
    if not model.n_classes:
        log.warning("train.sample_classes=%s is ignored: the model is not class-conditional "
                    "(model.conditional=false)", list(chosen))
        return
    try:
        class_rows(data.labels.classes, chosen, 1)
    except ValueError as error:
        raise ConfigError(f"train.sample_classes: {error}") from error


def restore(state: TrainingState, saved: dict, path: Path) -> None:
    """Load the checkpoint ``saved`` (read from ``path``) into ``state`` only once every
    part is known to fit."""
    check_state_dict_matches(state.model, saved["model"], "model", path)
    check_state_dict_matches(state.preprocessing, saved["preprocessing"], "preprocessing", path)
    try:
        state.load_state_dict(saved)
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} could not be restored: {error}") from error


_FIX_FOR_EVAL = ("Evaluate it with the config stored in it (leave out model and dequant "
                 "overrides).")


def check_same_classes(saved: dict, data: FlowData, path: Path) -> None:
    """A class-conditional checkpoint's classes, by name and in order, against the data's:
    other classes would score and sample every image under the wrong label."""
    shape = saved.get("data_shape")
    classes = shape.get("classes") if isinstance(shape, dict) else None
    if classes is None:
        return  # an unconditional model: labels, if any, are not used
    given = None if data.labels is None else list(data.labels.classes)
    if given != list(classes):
        raise CheckpointError(
            f"{path} holds a class-conditional model of the classes {_names(classes)}; "
            f"{data.name} has {'no class labels' if given is None else _names(given)}. "
            f"Give it data with the same classes in the same order, or leave data=... out "
            f"to use the data set it was trained on.")


def _names(classes: list[str]) -> str:
    return ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)"
                                      if len(classes) > 10 else "")


def check_data_fits(saved: dict, data: FlowData, path: Path) -> None:
    """Refuse data whose examples have another shape than the checkpoint's model takes,
    or, for a class-conditional model, other classes; warn when only the number of levels
    differs (bits/dim are then the new data's)."""
    shape = saved.get("data_shape")
    if not isinstance(shape, dict):
        return  # an older checkpoint: the state-dict shapes are checked instead
    check_same_classes(saved, data, path)
    expected = tuple(shape["event_shape"])
    if tuple(data.event_shape) != expected:
        raise CheckpointError(
            f"the data ({data.name}) has examples of shape {tuple(data.event_shape)}, but "
            f"{path} holds a model for shape {expected}. Give data of that shape, or leave "
            f"data=... out to use the data set it was trained on.")
    if shape.get("levels") != data.levels:
        log.warning("the model was trained on data with %s levels per value; %s has %s",
                    shape.get("levels"), data.name, data.levels)


def checkpoint_shape(saved: dict, path: Path, data: FlowData | None
                     ) -> tuple[tuple[int, ...], int | None]:
    """The event shape and levels a checkpoint's model is rebuilt for: stored in it, or,
    for a checkpoint older than that, those of ``data``. Given data with other levels (a
    warning of ``check_data_fits``), its levels: bits/dim are then the new data's."""
    shape = saved.get("data_shape")
    if isinstance(shape, dict):
        levels = data.levels if data is not None else shape.get("levels")
        return tuple(shape["event_shape"]), levels
    if data is None:
        raise CheckpointError(f"{path} does not say what data its model was trained on (it "
                              f"was written before checkpoints did); evaluate it with "
                              f"flowtrain task=eval ckpt={path} and its data set instead.")
    return tuple(data.event_shape), data.levels


def rebuild_from_checkpoint(cfg: DictConfig, saved: dict, path: Path, device: torch.device,
                            data: FlowData | None = None, fix: str = _FIX_FOR_EVAL
                            ) -> tuple[FlowModel, Preprocessing]:
    """The model and preprocessing of a checkpoint, built from ``cfg`` (its stored config,
    or that with evaluation keys changed) and its weights, without its data set: the one
    restore path of ``flowtrain.load``, ``task=eval`` and ``task=sample``. ``data`` is
    needed only by checkpoints that do not store their data shape."""
    event_shape, levels = checkpoint_shape(saved, path, data)
    preprocessing_weights = evaluated_weights(saved).get("preprocessing") or {}
    # Placeholders: loading the weights puts the training split's statistics in.
    standardize = (Standardize(torch.zeros(event_shape), torch.ones(event_shape))
                   if "standardize.mean" in preprocessing_weights else Identity())
    model, preprocessing = build_for_shape(cfg, event_shape, levels, standardize, device,
                                           n_classes=len(checkpoint_classes(saved, cfg, path)
                                                         or ()))
    load_weights(model, preprocessing, saved, path, fix)
    return model, preprocessing


def checkpoint_classes(saved: dict, cfg: DictConfig, path: Path) -> tuple[str, ...] | None:
    """The class names a checkpoint's conditional model was trained with (None for an
    unconditional model): stored with its data shape."""
    if not is_conditional(cfg):
        return None
    shape = saved.get("data_shape")
    classes = shape.get("classes") if isinstance(shape, dict) else None
    if not isinstance(classes, list) or len(classes) < 2:
        raise CheckpointError(f"{path} holds a class-conditional model but not the classes "
                              f"it was trained with; it cannot be rebuilt.")
    return tuple(str(name) for name in classes)
