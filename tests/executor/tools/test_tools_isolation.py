"""run_in_subprocess: results, errors, and a child that is really gone after a timeout."""

from __future__ import annotations

import asyncio
import os

import pytest

from executor.errors import ToolRetry
from executor.tools import (
    CPULimitExceeded,
    SubprocessToolError,
    ToolContext,
    run_in_subprocess,
)
from tests.executor.tools import tool_targets


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_returns_the_result_of_sync_and_async_functions() -> None:
    assert await run_in_subprocess(tool_targets.add, {"a": 2, "b": 3}, timeout_s=30) == 5
    assert await run_in_subprocess(tool_targets.async_double, {"x": 21}, timeout_s=30) == 42


async def test_runs_in_another_process() -> None:
    pids: list[int] = []
    child = await run_in_subprocess(tool_targets.child_pid, {}, timeout_s=30, on_start=pids.append)
    assert child == pids[0] != os.getpid()


async def test_a_runaway_child_is_killed_at_its_timeout() -> None:
    pids: list[int] = []
    with pytest.raises(TimeoutError, match=r"loop_forever was killed after 0.5 s"):
        await run_in_subprocess(tool_targets.loop_forever, {}, timeout_s=0.5, on_start=pids.append)
    assert len(pids) == 1 and _gone(pids[0])


async def test_a_child_past_its_cpu_time_is_stopped_by_the_kernel() -> None:
    pids: list[int] = []
    # Why a wall timeout this long: the CPU limit, not the clock, must be what stops it.
    with pytest.raises(CPULimitExceeded, match=r"burn_cpu_forever used its 1 s of CPU") as info:
        await run_in_subprocess(
            tool_targets.burn_cpu_forever, {}, timeout_s=120, max_cpu_s=1, on_start=pids.append
        )
    assert isinstance(info.value, SubprocessToolError) and info.value.max_cpu_s == 1
    assert _gone(pids[0])
    # Within the limit, nothing changes.
    assert (
        await run_in_subprocess(tool_targets.add, {"a": 1, "b": 1}, timeout_s=30, max_cpu_s=5) == 2
    )


async def test_cancelling_the_awaiting_task_kills_the_child() -> None:
    started = asyncio.Event()
    pids: list[int] = []

    def on_start(pid: int) -> None:
        pids.append(pid)
        started.set()

    task = asyncio.create_task(
        run_in_subprocess(tool_targets.loop_forever, {}, timeout_s=60, on_start=on_start)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(pids[0])


async def test_the_tools_exception_is_reraised_with_the_child_traceback() -> None:
    with pytest.raises(ValueError, match="no good") as info:
        await run_in_subprocess(
            tool_targets.raise_value_error, {"message": "no good"}, timeout_s=30
        )
    assert "traceback in the child process" in str(info.value.__cause__)
    assert "raise_value_error" in str(info.value.__cause__)
    with pytest.raises(ToolRetry, match="try a smaller number"):
        await run_in_subprocess(tool_targets.raise_tool_retry, {}, timeout_s=30)


async def test_prints_do_not_corrupt_the_result() -> None:
    assert await run_in_subprocess(tool_targets.chatty, {}, timeout_s=30) == "clean"


async def test_a_crashing_child_is_a_clear_error() -> None:
    with pytest.raises(SubprocessToolError, match="exited with code 3 without a result"):
        await run_in_subprocess(tool_targets.die, {"code": 3}, timeout_s=30)


async def test_an_unpicklable_result_is_a_clear_error() -> None:
    with pytest.raises(SubprocessToolError, match="cannot be pickled"):
        await run_in_subprocess(tool_targets.unpicklable_result, {}, timeout_s=30)


async def test_a_memory_limit_turns_into_memory_error() -> None:
    with pytest.raises(MemoryError):
        await run_in_subprocess(
            tool_targets.allocate, {"mb": 2048}, timeout_s=30, max_memory_mb=512
        )


async def test_local_functions_and_lambdas_are_refused_before_spawning() -> None:
    def local() -> None: ...

    with pytest.raises(SubprocessToolError, match="top-level function"):
        await run_in_subprocess(local, {}, timeout_s=1)
    with pytest.raises(SubprocessToolError, match="top-level function"):
        await run_in_subprocess(lambda: None, {}, timeout_s=1)


async def test_a_process_tool_through_the_registry(ctx: ToolContext) -> None:
    # The module-level name is the Tool object; the child resolves it to its function.
    out = await tool_targets.pid_tool.invoke({}, ctx)
    assert not out.is_error and int(out.content) != os.getpid()
    out = await tool_targets.spin.invoke({"seconds": 60}, ctx)
    assert out.is_error and out.content == "spin timed out after 1 s"


async def test_a_process_tool_receives_its_context(ctx: ToolContext) -> None:
    out = await tool_targets.whoami.invoke({"greeting": "hi"}, ctx)
    assert out.content == "hi u1 in run-1"


def test_a_local_function_cannot_be_a_process_tool() -> None:
    from executor.errors import ConfigError
    from executor.tools import tool

    def local() -> None: ...

    with pytest.raises(ConfigError, match="top-level function"):
        tool(local, isolation="process")
