"""Errors leave a trace: the log has the detail and a reference, the audit an excerpt,
the member a generic sentence with the reference."""

from __future__ import annotations

import logging
import re

import pytest

from executor import outcome_note
from executor.agent import Invocation, RunnableAgent, RunResult, RunStatus
from executor.errors import AllModelsFailed, BadRequest, ContextTooLong, Overloaded
from executor.events import RunEvent, RunFinished, StepFinished
from executor.hooks import RunHook, RunState
from executor.messages import Message
from executor.models.base import Attempt, ModelRequest
from executor.run import Executor
from executor.testing import AuditCapture, RecordingDelivery, ScriptedModel

REF = re.compile(r"\(ref ([0-9A-F]{6})\)")
GENERIC = "Something went wrong on our side; the admins can find it in the log (ref {ref})."


def _inv() -> Invocation:
    return Invocation(messages=[Message.user("hi")])


class _BadObserver:
    async def on_event(self, event: RunEvent) -> None:
        if isinstance(event, StepFinished):
            raise KeyError("oops")


class _BadHook(RunHook):
    async def before_model_request(self, state: RunState, request: ModelRequest) -> ModelRequest:
        raise RuntimeError("hook bug with Bearer abcdefghijklmnop inside " + "x" * 2000)


async def test_a_bug_in_an_observer_is_logged_with_the_run_id_and_a_reference(
    caplog: pytest.LogCaptureFixture,
) -> None:
    audit = AuditCapture()
    delivery = RecordingDelivery()
    with caplog.at_level(logging.ERROR, logger="executor.run"):
        result = await Executor(audit=audit, observers=[_BadObserver()]).run(
            RunnableAgent(model=ScriptedModel(["fine"])),
            Invocation(messages=[Message.user("hi")], delivery=delivery),
        )
    assert result.status is RunStatus.ERROR and result.error_kind == "internal"
    assert result.error == "KeyError: 'oops'"
    ref = result.error_ref
    assert ref is not None and re.fullmatch(r"[0-9A-F]{6}", ref)
    assert result.note == GENERIC.format(ref=ref)
    assert "oops" not in result.note and "KeyError" not in result.note
    # the log line carries the run id, the reference and the traceback
    [record] = [r for r in caplog.records if r.name == "executor.run"]
    logged = record.getMessage()
    assert record.levelno == logging.ERROR
    assert result.run_id in logged and ref in logged
    assert "Traceback" in logged and "KeyError: 'oops'" in logged
    # the audit's closing row and the member's delivery see the same result
    finished = audit.of_type(RunFinished)[-1]
    assert finished.result.error_ref == ref and finished.result.error == "KeyError: 'oops'"
    assert delivery.result is result


async def test_a_bug_in_a_hook_keeps_only_a_scrubbed_excerpt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="executor.run"):
        result = await Executor(hooks=[_BadHook()]).run(
            RunnableAgent(model=ScriptedModel(["fine"])), _inv()
        )
    assert result.error_kind == "internal" and result.error is not None
    assert result.error.startswith("RuntimeError: hook bug with [redacted] inside xxx")
    assert len(result.error) < 400 and "more characters" in result.error
    assert result.note == GENERIC.format(ref=result.error_ref)
    logged = caplog.records[-1].getMessage()
    assert "abcdefghijklmnop" not in logged and "[redacted]" in logged


async def test_two_failures_get_two_references() -> None:
    ex = Executor(observers=[_BadObserver()])
    a = await ex.run(RunnableAgent(model=ScriptedModel(["x"])), _inv())
    b = await ex.run(RunnableAgent(model=ScriptedModel(["x"])), _inv())
    assert a.error_ref and b.error_ref and a.error_ref != b.error_ref


async def test_a_bad_request_is_not_shown_to_the_member(caplog: pytest.LogCaptureFixture) -> None:
    text = "proxy: invalid_request_error (400): key sk-proxy-12345678abcdef is not allowed here"
    model = ScriptedModel([BadRequest(text, model="test:scripted", status=400)])
    with caplog.at_level(logging.WARNING, logger="executor.run"):
        result = await Executor().run(RunnableAgent(model=model), _inv())
    assert result.status is RunStatus.ERROR and result.error_kind == "bad_request"
    ref = result.error_ref
    assert ref is not None
    assert result.note == (
        f"The model could not answer this request; the admins can find it in the log (ref {ref})."
    )
    # the audit keeps the detail, redacted; the log has it by the reference
    assert result.error is not None and "invalid_request_error (400)" in result.error
    assert "sk-proxy" not in result.error and "[redacted]" in result.error
    logged = caplog.records[-1].getMessage()
    assert ref in logged and result.run_id in logged and "bad_request" in logged
    assert "sk-proxy" not in logged


async def test_context_too_long_says_so_without_the_provider_s_text() -> None:
    model = ScriptedModel([ContextTooLong("prompt is too long: 250000 tokens > 200000 maximum")])
    result = await Executor().run(RunnableAgent(model=model), _inv())
    assert result.error_kind == "context_too_long" and result.note is not None
    assert result.note.startswith("The conversation is too long for the model")
    assert REF.search(result.note) and "250000" not in result.note


async def test_a_retriable_error_of_a_bare_model_is_generic_too() -> None:
    model = ScriptedModel([Overloaded("busy, see https://status.example/abc", model="m")])
    result = await Executor().run(RunnableAgent(model=model), _inv())
    assert result.error_kind == "overloaded" and result.note is not None
    assert "status.example" not in result.note and REF.search(result.note)


async def test_every_model_failing_names_the_models_and_kinds_only() -> None:
    attempts = [
        Attempt(
            model="anthropic:a",
            latency_ms=1,
            error="529 sk-abcdefgh12345678",
            error_kind="overloaded",
        ),
        Attempt(model="openai:b", latency_ms=1, error="429 slow down", error_kind="rate_limited"),
    ]
    model = ScriptedModel([AllModelsFailed(attempts, tier="standard")])
    result = await Executor().run(RunnableAgent(model=model), _inv())
    assert result.note == (
        "No model could answer right now; tried anthropic:a (overloaded), openai:b (rate_limited)."
    )
    assert result.error is not None and "sk-abcdefgh" not in result.error


def test_outcome_note_without_a_reference_or_a_kind() -> None:
    bare = RunResult(run_id="r", status=RunStatus.ERROR, error="ValueError: x")
    assert (
        outcome_note(bare) == "Something went wrong on our side; the admins can find it in the log."
    )
    config = RunResult(
        run_id="r",
        status=RunStatus.ERROR,
        error="no API key for anthropic: set X",
        error_kind="config",
    )
    assert outcome_note(config) == "no API key for anthropic: set X"
