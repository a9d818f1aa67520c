"""The ``flowtrain`` command line as Hydra will read it, read before Hydra runs: for what
must happen first (the run folder's lock, a checkpoint's own options). Hydra's own
parsers read it, so quoting, ``++key=`` and flags mean here what they mean to Hydra; a
line they refuse is left to Hydra to report."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stderr
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CommandLine:
    flags: argparse.Namespace  # Hydra's flags (--multirun, --cfg, --help, ...)
    values: dict[str, Any]  # what each override that sets a key sets it to
    named: frozenset[str]  # every key or group an override names (set, added or deleted)

    @property
    def sweep(self) -> bool:
        return bool(self.flags.multirun
                    or str(self.values.get("hydra.mode", "")).upper() == "MULTIRUN")

    @property
    def only_prints(self) -> bool:
        """--cfg, --help, --hydra-help, --info, shell completion: nothing runs."""
        flags = self.flags
        return bool(flags.cfg or flags.help or flags.hydra_help or flags.info
                    or flags.shell_completion)


def read_command_line(argv: list[str]) -> CommandLine | None:
    """``argv`` (program name first) as Hydra reads it; None where Hydra would refuse it."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    try:
        with redirect_stderr(io.StringIO()):  # Hydra says it again, once, when it runs
            flags = get_args_parser().parse_args(argv[1:])
        overrides = OverridesParser.create().parse_overrides(flags.overrides)
    except (SystemExit, HydraException):
        return None
    # +key (ADD) of an existing key is refused by Hydra; ~key deletes it
    values = {override.key_or_group: override.value() for override in overrides
              if override.type in (OverrideType.CHANGE, OverrideType.FORCE_ADD)}
    return CommandLine(flags, values,
                       frozenset(override.key_or_group for override in overrides))
