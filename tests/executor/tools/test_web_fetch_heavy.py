"""web_fetch cannot eat the CPU, and cannot starve the SSRF guard's DNS lookups.

A page of many small tags, served on loopback, costs seconds of CPU to turn into
text. Its extraction runs in a child process with a CPU budget: past it the kernel
stops the child, the model hears why, and the run goes on. Neither the extraction of
a large page nor the guard's lookups use the event loop's default executor: with that
executor held by other slow work (as a small page's extraction in a thread would
hold it), the fetch, its DNS lookup and another lookup beside it all finish first.
Ordering is asserted with events, never with timings.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiohttp import web

from executor.agent import Caller, Invocation, Privilege, RunnableAgent, RunStatus
from executor.messages import Message, ToolResultPart
from executor.run import Executor
from executor.testing import ScriptedModel, call
from executor.tools import SSRFGuard, SystemResolver, ToolRegistry, WebFetcher
from executor.tools.builtin import web_fetch_tool

HEAVY = "<html><body>" + "<b>a</b>" * 250_000 + "</body></html>"  # 2 MB of small tags
HANG_GUARD_S = 60.0  # only so a broken build fails instead of hanging


@pytest.fixture
async def site() -> AsyncIterator[int]:
    async def heavy(request: web.Request) -> web.Response:
        return web.Response(text=HEAVY, content_type="text/html")

    app = web.Application()
    app.router.add_get("/heavy", heavy)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


class HeldDefaultExecutor:
    """The loop's default executor, one thread, held by slow work until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.order: list[str] = []
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="held-default")

    def _slow_work(self) -> None:
        self.release.wait(HANG_GUARD_S)
        self.order.append("default executor released")

    def hold(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(self.pool)
        return loop.run_in_executor(None, self._slow_work)


@pytest.fixture
def held() -> Iterator[HeldDefaultExecutor]:
    h = HeldDefaultExecutor()
    try:
        yield h
    finally:
        h.release.set()
        h.pool.shutdown(wait=True)


async def test_a_heavy_page_is_cut_off_and_the_run_goes_on_while_dns_still_answers(
    site: int, held: HeldDefaultExecutor
) -> None:
    resolver = SystemResolver()
    # Loopback is allowed here only by the explicit test switch; "localhost" goes
    # through the real resolver (getaddrinfo, /etc/hosts) on its own threads.
    guard = SSRFGuard(resolver=resolver, allow_loopback=True)
    fetcher = WebFetcher(guard=guard, extract_cpu_s=1, extract_timeout_s=HANG_GUARD_S)
    registry = ToolRegistry([web_fetch_tool(fetcher)])
    url = f"http://localhost:{site}/heavy"
    model = ScriptedModel([call("web_fetch", url=url), "I could not read that page."])
    invocation = Invocation(
        messages=[Message.user("summarise this page")],
        caller=Caller(user_id="u1", privilege=Privilege.USER),
    )

    holding = held.hold()

    async def run() -> RunStatus:
        result = await Executor(tools=registry).run(
            RunnableAgent(model=model, tools=("web_fetch",)), invocation
        )
        held.order.append("run finished")
        return result.status

    async def lookup_beside_it() -> list[str]:
        answers = await guard.check(f"http://localhost:{site}/other")
        held.order.append("dns answered")
        return [str(answers.ip)]

    try:
        async with asyncio.timeout(HANG_GUARD_S):
            status, beside = await asyncio.gather(run(), lookup_beside_it())
    finally:
        held.release.set()
        await holding
        resolver.close()

    # The fetch (its DNS lookup and its extraction) and a lookup beside it all ended
    # while the default executor was held by other slow work.
    assert sorted(held.order[:2]) == ["dns answered", "run finished"]
    assert held.order[2] == "default executor released"
    assert beside and status is RunStatus.OK
    # The model heard why, as a tool error, and answered after it.
    results = [
        p for m in model.requests[-1].messages for p in m.parts if isinstance(p, ToolResultPart)
    ]
    assert len(results) == 1 and results[0].is_error
    assert results[0].content == (
        f"{url} is too heavy to read: turning its HTML into text took more than 1 s of "
        "CPU and was stopped"
    )
    assert len(model.requests) == 2
