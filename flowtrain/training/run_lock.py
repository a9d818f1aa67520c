"""One writer per run folder. The process that trains in a folder (rank 0 under torchrun)
holds an OS file lock there (``filelock``: flock, released by the kernel when the process
dies, however it dies) for as long as it writes, and records who it is beside it. A
second writer stops before touching anything and names the first; a lock whose holder is
gone (SIGKILL, a power cut, a node that went away) is simply free again, and the record it
left is reported as taken over.

Shared filesystems: flock on NFS (v4, or v3 with lockd) and on Lustre mounted with
``-o flock`` is seen by every node; where a filesystem has no flock at all, ``filelock``
falls back to a lock file of its own, which a later process breaks only when its holder
ran on the same host and is gone. ``FLOWTRAIN_RUN_LOCK=off`` turns the lock off for a
filesystem whose locks hang or fail.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from flowtrain.command_line import read_command_line
from flowtrain.errors import FlowtrainError

log = logging.getLogger(__name__)

LOCK_FILE = ".flowtrain.lock"
OWNER_FILE = ".flowtrain-owner.json"
OFF_SWITCH = "FLOWTRAIN_RUN_LOCK"
# What a filesystem without file locks answers flock with.
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}

# The folders this process holds (a folder locked before Hydra starts is not locked again
# once Hydra names it), each with the warning its taking-over still owes the run's log:
# before Hydra has set logging up, a warning would miss flowtrain.log.
_held: dict[Path, str | None] = {}


class RunFolderBusy(FlowtrainError):
    """The run folder cannot be had: another live process writes it, or its lock cannot
    be taken at all."""


def _owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)}


def _read_owner(run_dir: Path) -> dict | None:
    try:
        owner = json.loads((run_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _owner_soon(run_dir: Path, patience_s: float = 1.0) -> dict | None:
    """The holder's record, waiting a moment for a holder that has just taken the lock and
    not yet written it."""
    deadline = time.monotonic() + patience_s
    while (owner := _read_owner(run_dir)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return owner


def _described(owner: dict | None) -> str:
    if owner is None:
        return ("no record of which: it may be starting, or this filesystem's locks may not "
                f"work; if no flowtrain runs there, start with {OFF_SWITCH}=off")
    return (f"PID {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"
            f": {owner.get('command')}")


@contextmanager
def run_folder_lock(run_dir: Path, hold: bool = True, logging_ready: bool = True
                    ) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the body (``hold``: false, e.g. on ranks other than 0,
    holds nothing); refuse, before anything is written there, when a live process holds it.
    Before logging is set up (``logging_ready``: false), a takeover's warning waits for the
    next call on the same folder."""
    run_dir = run_dir.resolve()
    if run_dir in _held:
        owed = _held[run_dir]
        if owed is not None and logging_ready:
            log.warning("%s", owed)
            _held[run_dir] = None
        yield
        return
    if not hold or os.environ.get(OFF_SWITCH, "").lower() == "off":
        yield
        return
    from filelock import FileLock, Timeout

    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        owner = _owner_soon(run_dir)
        elsewhere = "" if owner is None or owner.get("host") == socket.gethostname() else (
            f" If that machine went away, its lock ends with the filesystem's lease (about "
            f"a minute and a half on NFSv4); where the filesystem has no file locks, delete "
            f"{run_dir / LOCK_FILE}.")
        raise RunFolderBusy(
            f"{run_dir} is being written by another flowtrain process ({_described(owner)}). "
            f"Two writers would mix their checkpoints and curves. Wait for it to finish or "
            f"stop it, then run this again, or give this run another folder "
            f"(hydra.run.dir=...).{elsewhere}") from None
    except OSError as error:  # after Timeout, itself an OSError
        fix = (f"If this filesystem does not support locks and no other flowtrain process "
               f"writes there, start with {OFF_SWITCH}=off." if error.errno in _NO_LOCKS
               else "Make the folder writable, or give this run another one "
                    "(hydra.run.dir=...).")
        raise RunFolderBusy(f"{run_dir}: the run folder's lock ({LOCK_FILE}) could not be "
                            f"taken: {error}. {fix}") from error
    try:
        left = _read_owner(run_dir)
        owed = None if left is None else (
            f"{run_dir}: taking over the run folder from {_described(left)}, which no longer "
            f"holds it (it was killed, or its machine went away)")
        if owed is not None and logging_ready:
            log.warning("%s", owed)
            owed = None
        (run_dir / OWNER_FILE).write_text(json.dumps(_owner_record(), indent=2) + "\n")
        _held[run_dir] = owed
        yield
    finally:
        _held.pop(run_dir, None)
        (run_dir / OWNER_FILE).unlink(missing_ok=True)
        try:
            if created and [path.name for path in run_dir.iterdir()] == [LOCK_FILE]:
                # a command refused before it wrote anything (a value out of range) leaves
                # no empty folder behind; removed while still held, so no one takes it
                # meanwhile. Where that cannot be done (NFS keeps an open file's .nfs
                # copy), the folder stays: it is only tidying.
                with suppress(OSError):
                    (run_dir / LOCK_FILE).unlink()
                    run_dir.rmdir()
        finally:
            lock.release()


def run_dir_named_in(argv: list[str]) -> Path | None:
    """The run folder a training command names (``hydra.run.dir=...``), which can be locked
    before Hydra writes its config and log there; None for a sweep, a task on a checkpoint,
    a rank other than 0, a command that only prints (``--cfg``, ``--help``, ``--info``, shell
    completion), a folder Hydra picks itself (new and empty), one set in a config file, or
    one it interpolates (``${now:...}``, known only once Hydra resolves it): those are
    locked when training starts."""
    line = read_command_line(argv)
    if (line is None or line.sweep or line.only_prints
            or str(line.values.get("task", "train")) != "train"
            or os.environ.get("RANK", "0") != "0"):
        return None
    folder = line.values.get("hydra.run.dir")
    # Hydra does not expand ~ either: hydra.run.dir='~/x' is a folder named ~ in the cwd.
    if not isinstance(folder, (str, int, float)) or "${" in str(folder) or not str(folder):
        return None
    return Path(str(folder))
