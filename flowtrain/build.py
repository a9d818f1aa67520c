"""Build a run's components from its composed config, through ``_target_`` alone.

Adding a model, data set or dequantizer is a class and a YAML file; nothing here changes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from flowtrain.data.base import FlowData
from flowtrain.errors import CheckpointError
from flowtrain.flows.base import FlowModel
from flowtrain.likelihood import Preprocessing
from flowtrain.training.batches import BatchStream
from flowtrain.training.checkpoint import check_state_dict_matches, load_checkpoint
from flowtrain.training.loop import Trainer, TrainingState
from flowtrain.training.optim import build_optimizer, build_scheduler
from flowtrain.training.runtime import seed_everything, select_device

log = logging.getLogger(__name__)


def resume_path(resume: object, run_dir: Path) -> Path | None:
    """false -> None; true -> this run folder's last.pt; a path -> that file."""
    if resume is None or resume is False or str(resume).lower() in ("false", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        return run_dir / "checkpoints" / "last.pt"
    return Path(str(resume)).expanduser()


def build_trainer(cfg: DictConfig, run_dir: Path) -> Trainer:
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    data: FlowData = instantiate(cfg.data)
    model: FlowModel = instantiate(cfg.model, event_shape=data.event_shape).to(device)
    preprocessing = Preprocessing.for_data(instantiate(cfg.dequant), data).to(device)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    state = TrainingState(
        model=model,
        preprocessing=preprocessing,
        optimizer=optimizer,
        scheduler=build_scheduler(cfg.optim, optimizer, cfg.train.steps),
        batches=BatchStream(data.train, cfg.train.batch_size, seed=cfg.seed),
        extra={"config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)},
    )
    checkpoint = resume_path(cfg.resume, run_dir)
    if checkpoint is not None:
        restore(state, checkpoint)
        log.info("resumed from %s at step %d", checkpoint, state.step)
    return Trainer(state, data, cfg.train, run_dir, device, seed=cfg.seed)


def restore(state: TrainingState, path: Path) -> None:
    """Load a checkpoint into ``state`` only once every part is known to fit."""
    saved = load_checkpoint(path)
    check_state_dict_matches(state.model, saved["model"], "model", path)
    check_state_dict_matches(state.preprocessing, saved["preprocessing"], "preprocessing", path)
    try:
        state.load_state_dict(saved)
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} could not be restored: {error}") from error
