"""Console logging of the training commands (`emo-prepare`, `emo-train`): the command owns its process, so it may
put a handler on the package logger; library modules never add handlers."""
from __future__ import annotations

import logging
import sys


def log_to_stderr(level: int, fmt: str, command: str) -> None:
    """The `emo_core` loggers at `level` and up to stderr with `fmt`, through one handler per `command` (calling
    main() again in the same process, as the tests do, adds no second copy of every line)."""
    package = logging.getLogger("emo_core")
    if not any(getattr(h, "emo_command", None) == command for h in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt))
        handler.emo_command = command
        package.addHandler(handler)
    package.setLevel(level)
