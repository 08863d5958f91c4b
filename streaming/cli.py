"""The command line of a service: flags derived from its config dataclass (:mod:`streaming.config`) plus
``--log-level``, then run it until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from streaming.config import add_config_arguments, flag
from streaming.runtime import run_main
from streaming.telemetry import setup_logging

DEFAULT_LOG_LEVEL = "info"


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` that shows each option's default (unless its help says it already, or it is None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
        if quiet or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


@dataclass
class ServiceOptions:
    """What every service process takes besides its config."""

    log_level: str = field(default=DEFAULT_LOG_LEVEL, metadata=flag("debug, info, warning or error"))


def service_parser(prog: str, description: str, config: type) -> argparse.ArgumentParser:
    """The CLI of a service: the flags of its ``config`` dataclass, then ``--log-level``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(p, config)
    add_config_arguments(p, ServiceOptions)
    return p


def service_main(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    service: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> None:
    """Parse flags, set up logging, run the service until SIGINT/SIGTERM; a port in use is one line."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    with contextlib.suppress(asyncio.CancelledError):
        try:
            run_main(service(args))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise SystemExit(f"{parser.prog}: {exc.strerror or exc}") from None
