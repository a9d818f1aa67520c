"""Checkpoints written atomically and read back safely.

A checkpoint is a dict of tensors and plain containers, so it loads with
``torch.load(weights_only=True)``: a file that would need to run pickled code is refused.
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from flowtrain.errors import CheckpointError

FORMAT = "flowtrain-checkpoint"
VERSION = 2  # 2: the loss window and non-finite counts joined the state


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the old checkpoint or the new one, never half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with _open_temporary(handle) as file:
            writer = _WriteErrorKeeper(file)
            try:
                torch.save({"format": FORMAT, "version": VERSION, **state}, writer)
            except RuntimeError as error:
                # torch.save reports a failed write as a RuntimeError with no errno.
                raise (writer.error or error) from error
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; a checkpoint is shared
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"no space left on the device while saving {path}: "
                f"{_what_is_kept(path)}. Free space there, then resume with resume=true "
                f"(or copy the run folder to a disk with room and resume there).") from error
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process never finished (the
    checkpoints themselves are whole); the ones removed."""
    partial = sorted(folder.glob(".*.pt.*.tmp")) if folder.is_dir() else []
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def _open_temporary(handle: int) -> BinaryIO:
    return os.fdopen(handle, "wb")


def _what_is_kept(path: Path) -> str:
    if path.exists():
        return f"the previous {path.name} is untouched and still loads"
    return "no earlier checkpoint of that name existed"


class _WriteErrorKeeper:
    """A file wrapper that remembers the OSError behind a failed write, so a full disk can
    be named as such (torch.save only says that a write failed)."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


_RESUME_HINT = ("Pass resume=PATH to a checkpoint file, or resume=true inside a run folder "
                "that has checkpoints/last.pt.")


def load_checkpoint(path: Path, missing_hint: str = _RESUME_HINT) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; refuse anything else with a reason.
    ``missing_hint``: how to name a checkpoint, said when there is none at ``path``."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}. {missing_hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only names the global it blocked. Bytes that are no pickle at all fail on
        # an operand instead, or, when they happen to read as a GLOBAL opcode, name a
        # made-up global: only a file torch could have written holds code to refuse.
        if "global" not in str(error).lower() or not _saved_by_torch(path):
            raise CheckpointError(_unreadable(path, error)) from error
        raise CheckpointError(
            f"refusing {path}: it holds pickled Python objects that loading would execute "
            f"(weights_only=True refused it: {_reason(error)})") from error
    except Exception as error:  # garbage fails anywhere in the unpickler (IndexError, ...)
        raise CheckpointError(_unreadable(path, error)) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a flowtrain checkpoint.")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}; "
                              f"this flowtrain reads version {VERSION}. Continue it with the "
                              f"flowtrain that wrote it, or start a new run.")
    return state


def _saved_by_torch(path: Path) -> bool:
    """Whether ``path`` is in a format torch.save writes: a zip archive (the default since
    torch 1.6), or a pickle that starts with its protocol header (the legacy format)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        header = file.read(2)
    return len(header) == 2 and header[0] == pickle.PROTO[0] and 2 <= header[1] <= 5


def _reason(error: Exception) -> str:
    """The line of torch.load's message that says what was wrong (it adds advice around
    it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "global" in line.lower() or "operand" in line.lower()]
    line = (named or lines or [""])[0]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _unreadable(path: Path, error: Exception) -> str:
    return (f"{path} is corrupt, truncated or not a checkpoint at all, and was not loaded "
            f"({_reason(error)}).")


def evaluated_weights(saved: dict[str, Any]) -> dict[str, Any]:
    """Where a checkpoint keeps the weights it is evaluated with: a run that kept a weight
    average was evaluated, selected and sampled with it, so that; else the trained ones.
    Both hold ``model`` and ``preprocessing`` state dicts."""
    return saved["average"] if isinstance(saved.get("average"), dict) else saved


def check_state_dict_matches(module: nn.Module, saved: dict[str, torch.Tensor],
                             what: str, path: Path,
                             fix: str = "Resume with the config it was trained with.") -> None:
    """Name the first differences between a saved state dict and ``module``, if any."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in saved.items()}
    problems = [f"missing {key}" for key in expected.keys() - found.keys()]
    problems += [f"unexpected {key}" for key in found.keys() - expected.keys()]
    problems += [f"{key}: saved {found[key]}, this run {expected[key]}"
                 for key in expected.keys() & found.keys() if expected[key] != found[key]]
    if problems:
        listed = "; ".join(sorted(problems)[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(f"{path} holds a different {what} than this run builds: "
                              f"{listed}{more}. {fix}")


def all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())
