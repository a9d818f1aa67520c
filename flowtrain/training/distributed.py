"""Data parallelism under torchrun: one process per device, each on its slice of every batch.

``torchrun --standalone --nproc_per_node=N -m flowtrain ...`` starts N copies of flowtrain;
each composes the config itself and joins one process group (gloo on the CPU, NCCL on
GPUs). Every rank draws the same global batch (same seed, same order) and keeps its own
contiguous slice, which is what a DistributedSampler does, and is restored by the same
checkpointed stream. Gradients are averaged by DistributedDataParallel; rank 0 alone logs,
evaluates, draws pictures and writes checkpoints.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from flowtrain.errors import ConfigError, FlowtrainError
from flowtrain.flows.base import FlowModel


class RankLost(FlowtrainError):
    """A collective failed: another rank died, hung or lost its connection."""


# What gloo says when a peer is gone or silent, in errors older torch raises as plain
# RuntimeErrors (newer torch raises DistError subclasses, caught by type). Not a bare
# "timed out": CUDA launches and DataLoaders time out too.
_PEER_FAILURES = ("connection reset", "connection closed", "connection refused",
                  "broken pipe", "pair closure", "for recv operation",
                  "for send operation", "gloo/transport")


def _a_collective_failed(error: RuntimeError) -> bool:
    """Whether ``error`` came from the process group rather than from flowtrain or the
    model (a refused checkpoint is a RuntimeError too, and says what it says)."""
    if isinstance(error, FlowtrainError):
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    message = str(error).lower()
    return any(failure in message for failure in _PEER_FAILURES)


def collective_timeout(seconds: float) -> timedelta:
    """train.dist_timeout_s as the process group takes it, checked on every run (not only
    under torchrun) so that a bad value is caught before the first multi-process job."""
    if not 1 <= seconds < math.inf:
        raise ConfigError(f"train.dist_timeout_s must be at least 1 second; got {seconds}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ConfigError(f"train.dist_timeout_s={seconds} is longer than any clock can "
                          f"count; 7200 (two hours) is the default") from None


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this node

    @property
    def nodes(self) -> int:
        """How many machines the run spans (torchrun starts as many processes on each)."""
        return max(self.world_size // max(self.local_world_size, 1), 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> Ranks:
        """torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; a single process
        without them."""
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        return cls(int(os.environ.get("RANK", 0)), world_size,
                   int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))

    def device(self, device: torch.device) -> torch.device:
        """Each rank on its own GPU (LOCAL_RANK); CPU ranks share the CPU."""
        if device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device, timeout_s: float = 7200.0) -> None:
        """Join the process group, once, when there is more than one process. A collective
        that waits longer than ``timeout_s`` for another rank fails (train.dist_timeout_s)."""
        timeout = collective_timeout(timeout_s)
        if not self.distributed or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Ranks other than 0 wait in their next collective while rank 0 evaluates, draws
        # samples (a PixelCNN needs a pass per pixel) or saves: the default, 2 hours, is
        # far more than NCCL's own 10 minutes.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timeout)

    @contextmanager
    def peers_explained(self, resume_command: str) -> Iterator[None]:
        """A collective that fails because another rank died, hung past
        train.dist_timeout_s or lost its connection, as a RankLost that says so and how to
        go on, instead of the backend's traceback."""
        try:
            yield
        except RuntimeError as error:
            if not self.distributed or not _a_collective_failed(error):
                raise
            line = next((text.strip() for text in str(error).splitlines() if text.strip()), "")
            raise RankLost(
                f"rank {self.rank}: another process of this run stopped, hung past "
                f"train.dist_timeout_s or lost its connection ({line[:300]}). Every rank "
                f"stops; checkpoints/last.pt, if one was written, holds the last checkpoint, "
                f"whole. Find the cause in the other ranks' output (torchrun names the rank "
                f"that failed first), then continue with: {resume_command}") from error

    def batch_slice(self, batch_size: int) -> slice:
        """This rank's part of a global batch of ``batch_size``."""
        if batch_size % self.world_size:
            raise ConfigError(f"train.batch_size={batch_size} must divide evenly between the "
                              f"{self.world_size} processes; make it a multiple of "
                              f"{self.world_size}.")
        per_rank = batch_size // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over all ranks (itself in a single process)."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size


    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """What DDP does for the model, for parameters outside it (a learned dequantizer)."""
        if not self.distributed:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on any rank: a stop that only some ranks received must
        stop them all at the same step, or the others wait forever in the next
        all-reduce."""
        if not self.distributed:
            return flag
        flags = torch.tensor([float(flag)], device=device)
        dist.all_reduce(flags)
        return bool(flags.item() > 0)

    def wait_for_all(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (a download, say), then the others."""
        if not self.is_main:
            self.wait_for_all()
        yield
        if self.is_main:
            self.wait_for_all()

    def check_same(self, value: str, what: str, fix: str) -> None:
        """Refuse to go on when the ranks disagree about ``value``."""
        if not self.distributed:
            return
        values: list[str | None] = [None] * self.world_size
        dist.all_gather_object(values, value)
        if len(set(values)) > 1:
            raise ConfigError(f"the {self.world_size} processes chose different {what}s "
                              f"({', '.join(sorted(set(map(str, values))))}); {fix}")


def leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _LogProb(nn.Module):
    """DistributedDataParallel averages gradients through a module's ``__call__`` only:
    this module's call is the flow's log_prob."""

    def __init__(self, model: FlowModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.model.log_prob(x, context)


class DataParallelFlow:
    """What the training step calls ``log_prob`` on under torchrun: the flow inside DDP."""

    def __init__(self, model: FlowModel, device: torch.device):
        device_ids = [device.index] if device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(_LogProb(model), device_ids=device_ids)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.wrapped(x, context)
