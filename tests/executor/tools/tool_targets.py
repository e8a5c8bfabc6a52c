"""Top-level functions for the subprocess tests (a child imports them by name)."""

from __future__ import annotations

import asyncio
import os
import time

from executor.errors import ToolRetry
from executor.tools import ToolContext, tool


def add(a: int, b: int) -> int:
    return a + b


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def loop_forever() -> None:
    while True:
        time.sleep(0.01)


def burn_cpu_forever() -> None:
    n = 0
    while True:
        n += 1


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_tool_retry() -> None:
    raise ToolRetry("try a smaller number")


def chatty() -> str:
    print("noise on stdout that must not corrupt the result")
    return "clean"


def die(code: int) -> None:
    os._exit(code)


def unpicklable_result() -> object:
    return lambda: None


def allocate(mb: int) -> int:
    return len(bytearray(mb * 1024 * 1024))


def child_pid() -> int:
    return os.getpid()


@tool(isolation="process", timeout_s=1.0)
def spin(seconds: float) -> str:
    """Burn CPU for a while.

    Args:
        seconds: how long
    """
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "done"


@tool(isolation="process", timeout_s=20.0)
def pid_tool() -> int:
    """The child's pid."""
    return os.getpid()


@tool(isolation="process", timeout_s=20.0)
def whoami(context: ToolContext, greeting: str = "hello") -> str:
    """Greet the caller from a child process."""
    return f"{greeting} {context.caller.user_id} in {context.run_id}"
