"""TensorBoard scalars and figures, and the run's metrics.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """Everything a run writes for people to read, under one run folder."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        self.run_dir = run_dir
        # purge_step drops events a killed run wrote after its last checkpoint (at steps
        # past the one it resumes from), so a resumed run's curves don't double back.
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def figures(self, figures: dict[str, Figure | Tensor], step: int) -> None:
        """Matplotlib figures, or image tensors [C, H, W] with values in [0, 1]."""
        for tag, picture in figures.items():
            if isinstance(picture, Tensor):
                self.writer.add_image(tag, picture, step)
                continue
            self.writer.add_figure(tag, picture, step, close=True)
            plt.close(picture)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
