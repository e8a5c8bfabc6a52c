"""Leaving a trace of a failure: a short reference, and a log record an operator
can find by it, with secret-looking values scrubbed out of the traceback too."""

from __future__ import annotations

import logging
import secrets
import traceback

from executor.redaction import scrub

__all__ = ["log_failure", "new_ref"]


def new_ref() -> str:
    """Six hex digits, upper case: short enough for a member to read out."""
    return secrets.token_hex(3).upper()


def log_failure(
    logger: logging.Logger,
    exc: BaseException,
    message: str,
    *args: object,
    level: int = logging.ERROR,
) -> None:
    """Log ``message % args`` and ``exc``'s traceback, scrubbed.

    Why not ``exc_info``: the handler would format the traceback after us, with
    whatever secret the exception's text holds.
    """
    tb = scrub("".join(traceback.format_exception(exc)).rstrip())
    logger.log(level, f"{message}\n%s", *args, tb)
