"""What a run writes for TensorBoard: scalars, figures and the HParams record."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def flat_hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.001, ...}: every leaf of the config as a number, bool or string (the
    types TensorBoard's HParams tab takes); lists and nulls as their text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flat_hyperparameters(value, prefix=f"{name}.")
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _wait_to_sort_after_existing_event_files(log_dir: Path) -> None:
    """TensorBoard reads a run's event files in name order (its directory watcher sorts
    them), and a name starts with the second it was made in, then the process id. A run
    resumed within the second its killed predecessor started could sort first, and its
    purge would then hide the earlier curves: wait (at most a second) until the new file
    sorts after them."""
    made = [int(path.name.split(".")[3]) for path in log_dir.glob("events.out.tfevents.*")
            if path.name.split(".")[3].isdigit()]
    if made:
        time.sleep(max(0.0, max(made) + 1 - time.time()))


class RunLogger:
    """A run's TensorBoard event file, under RUN/tb. A context manager that closes it."""

    def __init__(self, run_dir: Path, purge_step: int | None = None, enabled: bool = True):
        self.run_dir = run_dir
        # purge_step drops events a killed run wrote after its last checkpoint (at steps
        # past the one it resumes from), so a resumed run's curves don't double back.
        # Disabled (ranks other than 0 under torchrun): every call does nothing.
        if enabled and purge_step is not None:
            _wait_to_sort_after_existing_event_files(run_dir / "tb")
        self.writer = (SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)
                       if enabled else None)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def figures(self, figures: dict[str, Figure | Tensor], step: int) -> None:
        """Matplotlib figures, or image tensors [C, H, W] with values in [0, 1]."""
        if self.writer is None:
            return
        for tag, picture in figures.items():
            if isinstance(picture, Tensor):
                self.writer.add_image(tag, picture, step)
                continue
            self.writer.add_figure(tag, picture, step, close=True)
            plt.close(picture)

    def hyperparameters(self, config: dict[str, Any], results: dict[str, float],
                        step: int) -> None:
        """The run's config and final results for TensorBoard's HParams tab, written into
        this run's own event file: ``SummaryWriter.add_hparams`` would open a sub-run of its
        own, which the tab then shows apart from the run's curves."""
        if self.writer is None:
            return
        experiment, session_start, session_end = hparams(flat_hyperparameters(config),
                                                         results)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        self.scalars(results, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
