"""Run a tool in a child process that can be killed.

A thread cannot be stopped, so work that must end at its timeout (a runaway
loop, a C extension that never releases the GIL) runs in a fresh interpreter
started with ``asyncio.create_subprocess_exec``: the call goes over stdin and
the result comes back over stdout, both pickled, and the loop never blocks.
When the timeout passes, or the awaiting task is cancelled, the child's whole
process group is killed and reaped. ``max_cpu_s`` bounds the child's CPU time as
well (``RLIMIT_CPU``: the kernel stops it, however busy the machine, and
:class:`CPULimitExceeded` says so), and ``max_memory_mb`` its address space.

The function is sent by reference (module and qualified name), so it must be a
top-level function of an importable module; a ``@tool``-decorated name is
resolved back to its function in the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["CPULimitExceeded", "SubprocessToolError", "check_importable", "run_in_subprocess"]

_STDERR_TAIL = 2_000

# Runs in the child. Why not multiprocessing: its Process.join/Queue.get block,
# and a spawn context has no awaitable result; one exec with two pipes is simpler.
_CHILD = r"""
import os, pickle, sys, traceback
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # a tool's prints go to stderr, not into the result pipe
sys.stdout = sys.stderr
path, module, qualname, kwargs_blob, max_memory, max_cpu = pickle.loads(sys.stdin.buffer.read())
sys.path[:] = path
def _send(obj):
    out.write(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()
try:
    if max_memory or max_cpu:
        import resource
    if max_memory:
        resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
    if max_cpu:
        # SIGXCPU at the soft limit ends the process; SIGKILL a second later if not.
        resource.setrlimit(resource.RLIMIT_CPU, (max_cpu, max_cpu + 1))
    import importlib, inspect, asyncio
    fn = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    fn = getattr(fn, "function", fn)  # a Tool object: its function
    kwargs = pickle.loads(kwargs_blob)
    if inspect.iscoroutinefunction(fn):
        result = asyncio.run(fn(**kwargs))
    else:
        result = fn(**kwargs)
except BaseException as exc:
    tb = traceback.format_exc()
    try:
        _send(("error", exc, tb))
    except Exception:
        _send(("error", None, tb))
else:
    try:
        _send(("ok", result, ""))
    except Exception as exc:
        _send(("error", None, "the result cannot be pickled: %s: %s" % (type(exc).__name__, exc)))
"""


class SubprocessToolError(RuntimeError):
    """The child process failed in a way that is not the tool's own exception."""


class CPULimitExceeded(SubprocessToolError):
    """The child used up its CPU time (``max_cpu_s``) and was stopped by the kernel."""

    def __init__(self, qualname: str, max_cpu_s: int) -> None:
        super().__init__(f"{qualname} used its {max_cpu_s} s of CPU time and was stopped")
        self.max_cpu_s = max_cpu_s


class _RemoteTraceback(Exception):
    """Carries the child's traceback as the ``__cause__`` of a re-raised error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n---- traceback in the child process ----\n{self.tb}"


def check_importable(fn: Callable[..., Any]) -> None:
    """Raise :class:`SubprocessToolError` unless a child process can import ``fn``."""
    _reference(fn)


def _reference(fn: Callable[..., Any]) -> tuple[str, str]:
    fn = getattr(fn, "function", fn)
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise SubprocessToolError(
            f"{fn!r} cannot run in a subprocess: it must be a top-level function of a module"
        )
    if module == "__main__":
        raise SubprocessToolError(
            f"{qualname} cannot run in a subprocess: it is defined in __main__, "
            "which the child cannot import"
        )
    return module, qualname


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            # Why the group: the tool may have started children of its own.
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()


async def run_in_subprocess(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    timeout_s: float,
    max_memory_mb: int | None = None,
    max_cpu_s: int | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Any:
    """Call ``fn(**kwargs)`` in a child process and return its result.

    ``fn`` may be sync or async (the child runs it with ``asyncio.run``). The
    child is killed when ``timeout_s`` passes (``TimeoutError``) or the awaiting
    task is cancelled. An exception raised by ``fn`` is re-raised here with the
    child's traceback as its cause; a crash of the child raises
    :class:`SubprocessToolError`, and one past ``max_cpu_s`` seconds of CPU time
    (its start-up included) :class:`CPULimitExceeded`. ``on_start`` receives the
    child's pid.
    """
    module, qualname = _reference(fn)
    try:
        kwargs_blob = pickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SubprocessToolError(f"the arguments of {qualname} cannot be pickled: {exc}") from exc
    max_memory = max_memory_mb * 1024 * 1024 if max_memory_mb else 0
    payload = pickle.dumps(
        (list(sys.path), module, qualname, kwargs_blob, max_memory, max_cpu_s or 0),
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if on_start is not None:
            on_start(proc.pid)
        try:
            async with asyncio.timeout(timeout_s):
                stdout, stderr = await proc.communicate(payload)
        except TimeoutError:
            raise TimeoutError(
                f"{qualname} was killed after {timeout_s:g} s in its subprocess"
            ) from None
    finally:
        if proc.returncode is None:
            _kill(proc)
            # Why shield: reap the child even when this task is being cancelled,
            # so no zombie outlives the call.
            await asyncio.shield(proc.wait())

    if not stdout:
        if max_cpu_s and proc.returncode == -signal.SIGXCPU:
            raise CPULimitExceeded(qualname, max_cpu_s)
        tail = stderr.decode(errors="replace")[-_STDERR_TAIL:].strip()
        raise SubprocessToolError(
            f"{qualname} exited with code {proc.returncode} without a result"
            + (f": {tail}" if tail else "")
        )
    try:
        status, value, tb = pickle.loads(stdout)
    except Exception as exc:
        raise SubprocessToolError(f"{qualname} sent back an unreadable result: {exc}") from exc
    if status == "ok":
        return value
    if isinstance(value, BaseException):
        if isinstance(value, Exception):
            raise value from _RemoteTraceback(tb)
        raise SubprocessToolError(f"{qualname} ended its process: {type(value).__name__}: {value}")
    raise SubprocessToolError(f"{qualname} failed in its subprocess:\n{tb[-_STDERR_TAIL:]}")
