"""A loopback OpenAI-compatible server for the chaos tests: scripted answers with a
known usage each, and the power to hold requests (before an answer, in the middle of
a stream, or in a slow tool's call) so a test can kill its client at a moment it
knows, and then say exactly which responses completed and which tool calls ran.

The script is a function of the conversation: a run's first user message is
``task <worker>-<n>``; the run calls the calculator ``1 + n % 3`` times, then answers.
When ``hold_after`` responses have completed, every later request is held (mode
``before``), answered with a few chunks of a stream then held (``mid-stream``; a
request that does not stream is held before its answer), or answered with a call of
the ``wait_here`` tool, whose own request to ``/wait`` is held (``in-tool``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from typing import Any, Literal

from aiohttp import web

from executor.messages import Usage
from executor.models.pricing import PriceTable

__all__ = ["MODEL", "HoldMode", "LoopbackOpenAI"]

MODEL = "openai:gpt-5-mini"
HoldMode = Literal["before", "mid-stream", "in-tool"]
_TASK = re.compile(r"task (\d+)-(\d+)")


class LoopbackOpenAI:
    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices or PriceTable()
        self.completed: list[int] = []  # the cost of every response written whole
        self.unanswered = 0  # model requests held with no answer (then their client died)
        self.tool_results: set[str] = set()  # tool call ids whose results came back
        self.hold_after: int | None = None
        self.mode: HoldMode = "before"
        self.held = 0
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/wait", self._wait)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def wait_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/wait"

    # --- holding ----------------------------------------------------------------

    def hold(self, after: int, mode: HoldMode) -> None:
        """Hold every request once ``after`` responses (in all) have completed."""
        self.hold_after, self.mode, self.held = after, mode, 0

    def release(self) -> None:
        """Let held handlers end (their client is gone) and stop holding."""
        self._release.set()
        self._release = asyncio.Event()
        self.hold_after, self.held = None, 0

    async def wait_held(self, n: int, timeout: float = 60.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.held >= n), timeout)

    async def _held(self) -> None:
        release = self._release
        async with self._changed:
            self.held += 1
            self._changed.notify_all()
        await release.wait()

    def _holding(self) -> bool:
        return self.hold_after is not None and len(self.completed) >= self.hold_after

    # --- handlers ---------------------------------------------------------------

    async def _wait(self, request: web.Request) -> web.StreamResponse:
        await self._held()
        return web.Response(status=503)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        messages: list[dict[str, Any]] = body["messages"]
        for m in messages:
            if m.get("role") == "tool":
                self.tool_results.add(str(m["tool_call_id"]))
        step = sum(1 for m in messages if m.get("role") == "assistant")
        first = next((m for m in messages if m.get("role") == "user"), {})
        found = _TASK.search(str(first.get("content", "")))
        n = int(found.group(2)) if found else 0
        stream = bool(body.get("stream"))
        holding = self._holding()
        if holding and self.mode in ("before", "mid-stream"):
            self.unanswered += 1
        if holding and self.mode == "before":
            await self._held()
            return web.Response(status=503)
        if holding and self.mode == "mid-stream":
            if stream:
                return await self._stream_then_hold(request)
            await self._held()
            return web.Response(status=503)
        if holding and self.mode == "in-tool":
            call: tuple[str, dict[str, Any]] | None = ("wait_here", {})
        elif step < 1 + n % 3:
            call = ("calculator", {"expression": f"{step} + {n}"})
        else:
            call = None
        usage = Usage(input_tokens=100 + 7 * len(messages), output_tokens=30 + 11 * step)
        cost = self.prices.cost_micros(MODEL, usage)
        if stream:
            response = await self._stream(request, call, usage, n)
        else:
            response = await self._json(request, call, usage, n)
        self.completed.append(cost)  # written whole: the client may read it all
        return response

    # --- wire formats -------------------------------------------------------------

    def _call_payload(self, call: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": f"call_{next(self._ids)}",
            "type": "function",
            "function": {"name": call[0], "arguments": json.dumps(call[1])},
        }

    @staticmethod
    def _usage(usage: Usage) -> dict[str, int]:
        return {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }

    async def _json(
        self,
        request: web.Request,
        call: tuple[str, dict[str, Any]] | None,
        usage: Usage,
        n: int,
    ) -> web.StreamResponse:
        message: dict[str, Any] = {"role": "assistant", "content": None if call else f"done {n}"}
        if call is not None:
            message["tool_calls"] = [self._call_payload(call)]
        data = json.dumps(
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "gpt-5-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if call else "stop",
                    }
                ],
                "usage": self._usage(usage),
            }
        ).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data)
        await response.write_eof()
        return response

    @staticmethod
    def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {
            "id": "chatcmpl-stream",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "gpt-5-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(self._chunk({"role": "assistant", "content": ""}))
        return response

    async def _stream(
        self,
        request: web.Request,
        call: tuple[str, dict[str, Any]] | None,
        usage: Usage,
        n: int,
    ) -> web.StreamResponse:
        response = await self._sse(request)
        if call is None:
            for piece in ("done ", str(n)):
                await response.write(self._chunk({"content": piece}))
        else:
            payload = self._call_payload(call)
            await response.write(
                self._chunk({"tool_calls": [{"index": 0, **payload}]}),
            )
        await response.write(self._chunk({}, "tool_calls" if call else "stop"))
        tail = {
            "id": "chatcmpl-stream",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "gpt-5-mini",
            "choices": [],
            "usage": self._usage(usage),
        }
        await response.write(f"data: {json.dumps(tail)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stream_then_hold(self, request: web.Request) -> web.StreamResponse:
        response = await self._sse(request)
        for piece in ("a long ", "answer, ", "still going"):
            await response.write(self._chunk({"content": piece}))
        await self._held()
        return response
