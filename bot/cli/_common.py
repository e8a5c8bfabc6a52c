"""What every CLI verb shares: one place that turns our errors into one clear line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from executor.errors import ConfigError, CoterieError

log = logging.getLogger("coterie")


def fail(message: str, code: int = 2) -> int:
    print(f"coterie: {message}", file=sys.stderr)
    return code


def run_handler(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a verb; coroutine handlers get an event loop. Known errors never show a traceback."""
    try:
        result = handler(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except ConfigError as exc:
        return fail(str(exc))
    except CoterieError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
