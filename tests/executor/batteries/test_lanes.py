from __future__ import annotations

import asyncio

from executor.lanes import Lanes


class Job:
    """A request that holds its slot until released."""

    def __init__(self, lanes: Lanes, key: str, log: list[str], name: str) -> None:
        self.positions: list[int] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.task = asyncio.create_task(self._run(lanes, key, log, name))

    async def _run(self, lanes: Lanes, key: str, log: list[str], name: str) -> None:
        async with lanes.slot(key, on_position=self.positions.append):
            log.append(name)
            self.started.set()
            await self.release.wait()


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_one_member_with_many_requests_does_not_starve_another() -> None:
    lanes = Lanes(slots=2)
    log: list[str] = []
    a = [Job(lanes, "A", log, f"a{i}") for i in range(10)]
    await _settle()
    b = Job(lanes, "B", log, "b0")
    await _settle()
    assert log == ["a0", "a1"]
    assert lanes.queued == 9 and lanes.queued_for("A") == 8
    assert b.positions == [1]  # B holds no slot: it goes before A's third
    a[0].release.set()
    await _settle()
    assert log[-1] == "b0" and b.positions == [1, 0]
    a[1].release.set()
    await _settle()
    assert log[-1] == "a2"
    for j in [*a, b]:
        j.release.set()
    await asyncio.gather(*(j.task for j in [*a, b]))
    assert lanes.running == 0 and lanes.queued == 0


async def test_round_robin_across_three_keys_and_positions() -> None:
    lanes = Lanes(slots=1)
    log: list[str] = []
    first = Job(lanes, "X", log, "x0")
    await _settle()
    jobs = [Job(lanes, k, log, f"{k.lower()}{i}") for k in "AB" for i in range(3)]
    jobs.append(Job(lanes, "C", log, "c0"))
    await _settle()
    assert [(k, i) for k, i in lanes.order()] == [
        ("A", 0),
        ("B", 0),
        ("C", 0),
        ("A", 1),
        ("B", 1),
        ("A", 2),
        ("B", 2),
    ]
    assert jobs[-1].positions == [3]
    first.release.set()
    for j in jobs:
        j.release.set()
    await asyncio.gather(first.task, *(j.task for j in jobs))
    assert log == ["x0", "a0", "b0", "c0", "a1", "b1", "a2", "b2"]


async def test_cancelling_a_queued_request_removes_it() -> None:
    lanes = Lanes(slots=1)
    log: list[str] = []
    holder = Job(lanes, "A", log, "a0")
    await _settle()
    gone = Job(lanes, "B", log, "b0")
    after = Job(lanes, "C", log, "c0")
    await _settle()
    assert after.positions == [2]
    gone.task.cancel()
    await _settle()
    assert gone.task.cancelled()
    assert after.positions == [2, 1] and lanes.queued == 1
    holder.release.set()
    after.release.set()
    await asyncio.gather(holder.task, after.task)
    assert log == ["a0", "c0"] and lanes.running == 0


async def test_a_request_cancelled_as_it_is_granted_hands_the_slot_on() -> None:
    lanes = Lanes(slots=1)
    log: list[str] = []
    holder = Job(lanes, "A", log, "a0")
    await _settle()
    unlucky = Job(lanes, "B", log, "b0")
    nxt = Job(lanes, "C", log, "c0")
    await _settle()
    holder.release.set()
    await asyncio.sleep(0)  # the holder leaves and grants b0 ...
    await asyncio.sleep(0)
    unlucky.task.cancel()  # ... which is cancelled before it runs
    await _settle()
    nxt.release.set()
    await asyncio.gather(holder.task, nxt.task, return_exceptions=True)
    assert "c0" in log and lanes.running == 0 and lanes.queued == 0


async def test_async_position_callbacks_are_awaited() -> None:
    lanes = Lanes(slots=1)
    seen: list[int] = []

    async def show(p: int) -> None:
        seen.append(p)

    async with lanes.slot("A"):
        waiting = asyncio.create_task(_use(lanes, "B", show))
        await _settle()
    await waiting
    await _settle()
    assert seen == [1, 0]


async def _use(lanes: Lanes, key: str, show: object) -> None:
    async with lanes.slot(key, on_position=show):  # type: ignore[arg-type]
        pass


async def test_a_slot_given_back_early_lets_the_next_request_in_once() -> None:
    """A run whose model is done gives its slot back before its block ends (its answer
    is still being posted); leaving the block then gives nothing back twice."""
    lanes = Lanes(slots=1)
    posted = asyncio.Event()
    log: list[str] = []

    async def first() -> None:
        async with lanes.slot("A") as held:
            log.append("a")
            held.release()
            held.release()  # idempotent
            await posted.wait()  # still in its block

    a = asyncio.create_task(first())
    await _settle()
    b = Job(lanes, "B", log, "b")
    await b.started.wait()  # in, while A's block goes on
    assert log == ["a", "b"] and lanes.running == 1
    posted.set()
    await a
    assert lanes.running == 1  # A's block ended without a second release
    b.release.set()
    await b.task
    assert lanes.running == 0 and lanes.running_by_key == {}
