"""What every CLI verb shares: settings read with one clear line per mistake, and one
place that turns our errors into one clear line (never a traceback)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.cli._logging import hide_userinfo
from executor.errors import ConfigError, CoterieError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from bot.settings import Settings

__all__ = ["SettingsInvalid", "describe_settings_error", "fail", "load_settings", "run_handler"]

log = logging.getLogger("coterie")

# Variables whose value is never echoed back, even when it is the wrong shape.
_SECRET_FIELDS = frozenset(
    {"discord_token", "anthropic_api_key", "openai_api_key", "brave_api_key", "tavily_api_key"}
)
_VALUE_SHOWN = 60


class SettingsInvalid(ConfigError):
    """One or more settings have a value that cannot be used; one line each."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def fail(message: str, code: int = 2) -> int:
    for line in str(message).splitlines() or [""]:
        print(f"coterie: {line}", file=sys.stderr)
    return code


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


# What a setting holds, where the bound alone does not say it.
_WHAT = {"budget_warn_percent": "must be a percentage from 1 to 100, e.g. 50,80"}


def _reason(error: Any, field: str) -> str:
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if field in _WHAT and kind.startswith(("greater_than", "less_than")):
        return _WHAT[field]
    if kind == "greater_than_equal":
        return f"must be at least {_num(ctx.get('ge'))}"
    if kind == "greater_than":
        return f"must be more than {_num(ctx.get('gt'))}"
    if kind == "less_than":
        return f"must be less than {_num(ctx.get('lt'))}"
    if kind == "less_than_equal":
        return f"must be at most {_num(ctx.get('le'))}"
    if kind == "finite_number":
        return "must be a finite number, e.g. 5.0"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type", "decimal_parsing"):
        return "must be a number, e.g. 5.0"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("list_type", "json_invalid", "json_type"):
        return 'must be a list: comma-separated (a,b) or JSON (["a", "b"])'
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}".replace("'", "")
    if kind == "missing":
        return "must be set"
    if kind == "value_error":  # our validators' own words
        msg = ctx.get("error") or error.get("msg", "is not valid")
        return str(msg).removeprefix("Value error, ")
    return str(error.get("msg", "is not valid")).rstrip(".").replace("Input should", "should")


def describe_settings_error(exc: ValidationError) -> list[str]:
    """One line per bad variable: ``COTERIE_LANE_SLOTS=0: must be at least 1``."""
    from bot.settings import Settings, env_name

    lines: list[str] = []
    seen: set[str] = set()
    for error in exc.errors():
        loc = error.get("loc") or ("?",)
        key = str(loc[0])
        field = key if key in Settings.model_fields else _field_of_alias(key)
        var = env_name(field) if field else key
        if var in seen:
            continue
        seen.add(var)
        raw = error.get("input")
        if field in _SECRET_FIELDS:
            shown = "(hidden)"
        elif isinstance(raw, str | int | float | bool):
            text = hide_userinfo(str(raw).replace("\n", " "))
            shown = text if len(text) <= _VALUE_SHOWN else text[:_VALUE_SHOWN] + "…"
        else:
            shown = "(the value given)"
        if len(loc) > 1:  # one item of a list
            lines.append(f"{var}: the item {shown} {_reason(error, field or key)}")
        else:
            lines.append(f"{var}={shown}: {_reason(error, field or key)}")
    return lines or ["the settings are not valid"]


def _field_of_alias(alias: str) -> str | None:
    from pydantic import AliasChoices

    from bot.settings import Settings

    for name, info in Settings.model_fields.items():
        choices = info.validation_alias
        if isinstance(choices, AliasChoices) and alias in choices.choices:
            return name
    return None


def load_settings(**overrides: Any) -> Settings:
    """``Settings()``, with a bad value turned into :class:`SettingsInvalid`."""
    from pydantic import ValidationError

    from bot.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsInvalid(describe_settings_error(exc)) from None


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(), no real file: assume it is
        return True


def _stdout_gone() -> int:
    """The reader of our output went away (``coterie audit list | head``): stop quietly,
    as a Unix tool killed by SIGPIPE would, with its exit status (128 + 13)."""
    # Why: Python flushes stdout once more at exit; pointed at /dev/null that cannot fail.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return 128 + signal.SIGPIPE


def started() -> None:
    """A quick verb's start is over (its app built, its SDK imported): the garbage
    collector, off since the program began (:func:`bot.cli.entry`), is turned back on,
    with what the start made frozen (never walked again). Nothing when it is on."""
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def run_handler(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a verb; coroutine handlers get an event loop. Known errors never show a traceback."""
    from pydantic import ValidationError

    try:
        result = handler(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        sys.stdout.flush()  # Why here: a closed pipe must raise inside this try, not at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket's or a child's pipe: not ours to hide
        return _stdout_gone()
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        return fail("\n".join(describe_settings_error(exc)))
    except ConfigError as exc:
        return fail(str(exc))
    except CoterieError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
