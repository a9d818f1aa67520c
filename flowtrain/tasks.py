"""``task=eval`` and ``task=sample``: what to do with a trained checkpoint.

Both rebuild the model from the config stored in the checkpoint
(``flowtrain.checkpoint_config``), load its weights, and write into the run folder:
``eval.json`` with every example's NLL (``eval_examples.npz``) and pictures of them, or
the samples (``samples.npz``), their picture and, for image flows, a latent
interpolation between test images.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from flowtrain.build import (
    check_data_fits,
    checkpoint_classes,
    checkpoint_shape,
    rebuild_from_checkpoint,
)
from flowtrain.checkpoint_config import check_held_out, checkpoint_config
from flowtrain.class_labels import MAX_CLASS_ROWS, class_rows, labels_for
from flowtrain.config import SampleConfig, Split, Task
from flowtrain.data.base import FlowData, as_stored
from flowtrain.errors import ConfigError, DataError, user_error_in
from flowtrain.flows.base import FlowModel
from flowtrain.flows.tarflow import guided
from flowtrain.latent import interpolate
from flowtrain.likelihood import Preprocessing, bits_per_dim
from flowtrain.training.checkpoint import load_checkpoint
from flowtrain.training.evaluation import (
    evaluation_generator,
    evaluation_mode,
    split_evaluation,
)
from flowtrain.training.figures import (
    extremes_figure,
    figures_for,
    image_grid,
    likelihood_histogram,
    save_picture,
)
from flowtrain.training.runtime import seed_everything, select_device

log = logging.getLogger(__name__)

_NAME_A_CHECKPOINT = ("Pass ckpt=PATH to a checkpoint file, such as "
                      "RUN_FOLDER/checkpoints/best.pt or last.pt.")


@dataclass
class Restored:
    """A checkpoint rebuilt under the config it runs with now; ``data`` is None where
    ``task=sample`` found none (samples need none, the interpolation does)."""

    path: Path
    cfg: DictConfig
    step: int
    device: torch.device
    model: FlowModel
    preprocessing: Preprocessing
    data: FlowData | None
    event_shape: tuple[int, ...]
    levels: int | None
    classes: tuple[str, ...] | None  # a class-conditional model's; None: unconditional


def _needs_data(task: Task, cfg: DictConfig, saved: dict) -> bool:
    """``task=eval`` always; ``task=sample`` for the interpolation between test images,
    the pictures of points (drawn over their data), and checkpoints that do not store
    their data shape."""
    shape = saved.get("data_shape")
    if task is Task.eval or not isinstance(shape, dict):
        return True
    images = len(shape["event_shape"]) == 3 and shape.get("levels") is not None
    return not images or cfg.sample.interpolation_pairs > 0


def _data_for(task: Task, cfg: DictConfig, saved: dict, path: Path) -> FlowData | None:
    """The data set ``cfg`` names, checked to fit the checkpoint, where the task uses it.
    ``task=sample`` goes on without it when it is missing (a CIFAR-10 model samples
    without the CIFAR-10 files), saying what it leaves out."""
    if not _needs_data(task, cfg, saved):
        return None
    try:
        data: FlowData = instantiate(cfg.data)
    except Exception as error:
        if task is Task.eval or not isinstance(user_error_in(error), DataError) \
                or "data_shape" not in saved:
            raise
        log.warning("sampling without the data set (%s): no interpolation, and for "
                    "points no pictures", user_error_in(error))
        return None
    check_data_fits(saved, data, path)
    return data


def restore_checkpoint(cfg: DictConfig, typed_overrides: list[str]) -> Restored:
    """Load ``cfg.ckpt`` and rebuild its model and preprocessing (and the data), under its
    stored config with the command line's evaluation and sampling keys on top."""
    task = Task(cfg.task)
    if cfg.ckpt is None:
        raise ConfigError(f"task={task.value} needs a checkpoint: add ckpt=PATH (a run "
                          f"folder's checkpoints/best.pt or last.pt)")
    path = Path(cfg.ckpt).expanduser()
    saved = load_checkpoint(path, missing_hint=_NAME_A_CHECKPOINT)
    run_cfg = checkpoint_config(saved, cfg, typed_overrides, path)
    check_held_out(saved, run_cfg, path)
    device = select_device(run_cfg.device)
    seed_everything(run_cfg.seed)
    data = _data_for(task, run_cfg, saved, path)
    model, preprocessing = rebuild_from_checkpoint(run_cfg, saved, path, device, data)
    event_shape, levels = checkpoint_shape(saved, path, data)
    step = int(saved.get("step", 0))
    log.info("%s: step %d, model %s, data %s", path, step,
             run_cfg.model._target_.rsplit(".", 1)[-1],
             data.name if data is not None else "not loaded")
    return Restored(path, run_cfg, step, device, model, preprocessing, data, event_shape,
                    levels, checkpoint_classes(saved, run_cfg, path))


def evaluate_checkpoint(restored: Restored, run_dir: Path) -> float:
    """The checkpoint's result on ``eval.split`` (test bits/dim by default; nats per point
    for continuous data), measured as its training run measured it; writes ``eval.json``."""
    started = time.perf_counter()
    if restored.cfg.train.eval_batch_size < 1:
        raise ConfigError(f"train.eval_batch_size must be at least 1; got "
                          f"{restored.cfg.train.eval_batch_size}")
    split = Split(restored.cfg.eval.split).value
    data = restored.data
    points = data.split(split)  # a missing validation split is refused before any work
    metrics, examples = split_evaluation(
        restored.model, restored.preprocessing, data, split,
        batch_size=restored.cfg.train.eval_batch_size, device=restored.device,
        seed=restored.cfg.seed, progress=True)
    examples = in_reported_units(data, examples)
    results: dict[str, Any] = {
        "checkpoint": str(restored.path.resolve()),
        "step": restored.step,
        "data": data.name,
        **({"data_version": data.version} if data.version else {}),
        "split": split,
        f"n_{split}": len(points),
        **metrics,
        **by_class(data, split, examples[data.reported_as]),
        "params": sum(p.numel() for p in restored.model.parameters()),
        "device": str(restored.device),
        "wall_s": time.perf_counter() - started,
    }
    (run_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    written = save_examples(data, split, examples, run_dir)
    key = f"{split}_{data.reported_as}"
    log.info("%s: %.4f %s on %s (%d examples), checkpoint at step %d; eval.json, %s are "
             "in %s", split, results[key], data.unit, data.name, len(points), restored.step,
             ", ".join(written), run_dir)
    return results[key]


def in_reported_units(data: FlowData, examples: dict[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """Per-example NLLs (nats), with bits/dim beside them for quantized data."""
    if not data.discrete:
        return examples
    return examples | {name.replace("nll", "bpd"): bits_per_dim(value, data.n_dims)
                       for name, value in examples.items()}


def by_class(data: FlowData, split: str, values: torch.Tensor) -> dict[str, Any]:
    """``{split}_{unit}_by_class``: the mean of ``values`` over each class's examples, by
    class name, for labelled data (which classes a model fits worst); {} otherwise."""
    labels = data.split_labels(split)
    if labels is None:
        return {}
    means = {name: values[labels == index].mean().item()
             for index, name in enumerate(data.labels.classes) if bool((labels == index).any())}
    return {f"{split}_{data.reported_as}_by_class": means}


def save_examples(data: FlowData, split: str, examples: dict[str, torch.Tensor],
                  run_dir: Path) -> list[str]:
    """eval_examples.npz (every example's NLL in nats, and bits/dim for quantized data,
    in the split's order, with its label where the data has them), the histogram of the
    values eval.json averages and, for images, the most and least likely examples; the
    files written."""
    labels = data.split_labels(split)
    np.savez(run_dir / "eval_examples.npz",
             **{name: value.numpy() for name, value in examples.items()},
             **({} if labels is None else {"labels": labels.numpy()}))
    shown = examples[data.reported_as]  # the bound, as eval.json's first number
    what = f"{data.name}, {split} split ({len(shown)} examples)"
    pictures = {"eval_histogram": likelihood_histogram(shown, data.unit, what)}
    points = data.split(split)
    if points.ndim == 4 and data.discrete:
        pictures["eval_extremes"] = extremes_figure(points, shown, data.levels, data.unit)
    for name, picture in pictures.items():
        save_picture(picture, run_dir / f"{name}.png")
    return ["eval_examples.npz", *(f"{name}.png" for name in pictures)]


def _as_data(values: torch.Tensor, levels: int | None) -> np.ndarray:
    return as_stored(values.cpu(), levels).numpy()


def sample_labels(restored: Restored, cfg: SampleConfig) -> tuple[torch.Tensor | None, int | None]:
    """(the labels to draw samples of, the samples a grid row holds): None, None for an
    unconditional model; every sample of ``sample.label``; or, without one, a row for
    each of the first classes (at most 10), as many a row as ``sample.n`` allows."""
    if restored.classes is None:
        if cfg.label is not None:
            raise ConfigError(f"sample.label={cfg.label}: this model was trained without "
                              f"labels (model.conditional=false); it models p(x) and draws "
                              f"no class. Train it with model.conditional=true on labelled "
                              f"data to sample a class.")
        return None, None
    if cfg.label is not None:
        try:
            return labels_for(cfg.label, cfg.n, restored.classes), None
        except ValueError as error:
            raise ConfigError(f"sample.{error}") from error
    rows = min(len(restored.classes), MAX_CLASS_ROWS)
    per_row = max(1, cfg.n // rows)
    if per_row * rows != cfg.n:
        log.info("sample.n=%d drawn as %d: %d a row for each of %d classes (sample.label=K "
                 "draws one class)", cfg.n, per_row * rows, per_row, rows)
    return class_rows(restored.classes, None, per_row), per_row


def sample_checkpoint(restored: Restored, run_dir: Path) -> None:
    """``sample.n`` samples at ``sample.temperature`` from a generator seeded with
    ``sample.seed`` (of ``sample.label``, or a row per class, for a class-conditional
    model): samples.npz and a picture; for images also the interpolation."""
    cfg, model, preprocessing = restored.cfg.sample, restored.model, restored.preprocessing
    labels, per_row = sample_labels(restored, cfg)
    n = cfg.n if labels is None else len(labels)
    generator = torch.Generator(restored.device).manual_seed(cfg.seed)
    with (evaluation_mode(model, preprocessing),
          guided(model, cfg.guidance, cfg.guidance_annealed)):
        samples = preprocessing.sample(model, n, cfg.temperature, generator,
                                       None if labels is None else labels.to(restored.device))
    np.savez(run_dir / "samples.npz", samples=_as_data(samples, restored.levels),
             temperature=cfg.temperature, seed=cfg.seed, step=restored.step,
             guidance=cfg.guidance, guidance_annealed=cfg.guidance_annealed,
             **({} if labels is None else {"labels": labels.numpy()}))
    written = ["samples.npz", *save_sample_pictures(restored, samples, run_dir, per_row)]
    if is_image(restored) and cfg.interpolation_pairs > 0 and restored.data is not None:
        written += save_interpolation(restored, cfg, run_dir)
    log.info("%d samples at temperature %g (sample.seed=%d)%s: %s in %s", n,
             cfg.temperature, cfg.seed, _of_classes(labels, restored.classes),
             ", ".join(written), run_dir)


def _of_classes(labels: torch.Tensor | None, classes: tuple[str, ...] | None) -> str:
    if labels is None or classes is None:
        return ""
    shown = [classes[index] for index in labels.unique().tolist()]
    return f" of class {shown[0]}" if len(shown) == 1 else f" of classes {', '.join(shown)}"


def is_image(restored: Restored) -> bool:
    return len(restored.event_shape) == 3 and restored.levels is not None


def save_sample_pictures(restored: Restored, samples: torch.Tensor, run_dir: Path,
                         per_row: int | None = None) -> list[str]:
    """samples.png (images: all of them in one grid, ``per_row`` a row, or about a
    square) or, for 1-D and 2-D points, the training run's figures drawn with these
    samples (they need the data); the files written."""
    model, preprocessing, data = restored.model, restored.preprocessing, restored.data
    if is_image(restored):
        pictures = {"samples": image_grid(samples, restored.levels, per_row=per_row)}
    elif data is not None:
        with evaluation_mode(model, preprocessing):
            pictures = figures_for(model, preprocessing, data, lambda *_: samples, len(samples))
    else:
        pictures = {}
    if not pictures:
        why = ("the data set was not loaded" if data is None
               else f"no picture for data of shape {restored.event_shape}")
        log.info("%s; the samples are in samples.npz", why)
    for name, picture in pictures.items():
        save_picture(picture, run_dir / f"{name}.png")
    return [f"{name}.png" for name in pictures]


def save_interpolation(restored: Restored, cfg: SampleConfig, run_dir: Path) -> list[str]:
    """interpolation.png, one row per pair of test images (chosen by ``sample.seed``), and
    interpolation.npz; encoding uses the evaluation's dequantization noise."""
    model, preprocessing, data = restored.model, restored.preprocessing, restored.data
    n_pairs = min(cfg.interpolation_pairs, len(data.test) // 2)
    if n_pairs == 0:
        log.info("no interpolation: the test set has fewer than two images")
        return []
    chosen = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(cfg.seed))
    labels = data.split_labels("test") if model.n_classes else None
    if model.n_classes and labels is None:
        log.info("no interpolation: a class-conditional model walks between two test images "
                 "of one class, and %s has no labels", data.name)
        return []
    indices = chosen[:2 * n_pairs].view(n_pairs, 2) if labels is None \
        else pairs_of_one_class(chosen, labels, n_pairs)
    if len(indices) == 0:
        log.info("no interpolation: no two test images share a class")
        return []
    with evaluation_mode(model, preprocessing):
        walk = interpolate(model, preprocessing, data.test[indices], cfg.interpolation_steps,
                           evaluation_generator(restored.device, restored.cfg.seed),
                           None if labels is None else labels[indices[:, 0]])
    save_picture(image_grid(walk.restored.flatten(0, 1), data.levels,
                            per_row=cfg.interpolation_steps), run_dir / "interpolation.png")
    np.savez(run_dir / "interpolation.npz", indices=indices.numpy(),
             pairs=_as_data(walk.pairs, restored.levels),
             restored=_as_data(walk.restored, restored.levels),
             encoded=walk.encoded.cpu().numpy(), decoded=walk.decoded.cpu().numpy(),
             **({} if labels is None else {"labels": labels[indices[:, 0]].numpy()}))
    return ["interpolation.png", "interpolation.npz"]


def pairs_of_one_class(order: torch.Tensor, labels: torch.Tensor, n_pairs: int
                       ) -> torch.Tensor:
    """[P, 2] indices: up to ``n_pairs`` pairs of examples of the same class, taken in
    ``order`` (a class-conditional model walks between two examples of one class)."""
    waiting: dict[int, int] = {}
    pairs = []
    for index in order.tolist():
        label = int(labels[index])
        if label in waiting:
            pairs.append((waiting.pop(label), index))
            if len(pairs) == n_pairs:
                break
        else:
            waiting[label] = index
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2)


def run_checkpoint_task(cfg: DictConfig, run_dir: Path, typed_overrides: list[str]
                        ) -> float | None:
    """``task=eval`` (returns the test bits/dim) or ``task=sample`` (returns None)."""
    task = Task(cfg.task)
    restored = restore_checkpoint(cfg, typed_overrides)
    if task is Task.eval:
        return evaluate_checkpoint(restored, run_dir)
    sample_checkpoint(restored, run_dir)
    return None
