"""The run loop records whether the answer reached its member: a delivery's report goes
on the result and into the audit (``RunDelivered``, after ``RunFinished``); a delivery
that fails to finish is a fact about the run, not an error out of it."""

from __future__ import annotations

from executor.agent import DeliveryReport, Invocation, RunnableAgent, RunResult
from executor.events import RunDelivered, RunFinished
from executor.messages import Message
from executor.ports import NullDelivery
from executor.run import Executor
from executor.testing import AuditCapture, ScriptedModel


class Reporting(NullDelivery):
    async def finish(self, result: RunResult) -> DeliveryReport:
        return DeliveryReport(delivered=True)


class Broken(NullDelivery):
    async def finish(self, result: RunResult) -> None:
        raise RuntimeError("the sink fell over")


async def _run(delivery: NullDelivery) -> tuple[RunResult, AuditCapture]:
    audit = AuditCapture()
    result = await Executor(audit=audit).run(
        RunnableAgent(model=ScriptedModel(["hi"])),
        Invocation([Message.user("hello")], delivery=delivery),
    )
    return result, audit


async def test_a_delivery_report_is_on_the_result_and_in_the_audit() -> None:
    result, audit = await _run(Reporting())
    assert result.ok and result.delivery == DeliveryReport(delivered=True)
    kinds = audit.kinds(result.run_id)
    assert kinds[-2:] == [RunFinished.__name__, RunDelivered.__name__]


async def test_a_delivery_that_says_nothing_records_nothing() -> None:
    result, audit = await _run(NullDelivery())
    assert result.delivery is None
    assert RunDelivered.__name__ not in audit.kinds(result.run_id)


async def test_a_delivery_that_fails_to_finish_is_recorded_not_raised() -> None:
    result, audit = await _run(Broken())
    assert result.ok
    assert result.delivery == DeliveryReport(
        delivered=False, error="RuntimeError: the sink fell over"
    )
    [event] = audit.of_type(RunDelivered)
    assert not event.delivered
