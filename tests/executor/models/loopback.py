"""Loopback HTTP servers for failover's timeouts: one accepts a request and then hangs,
one answers like OpenAI's Chat Completions. The real SDKs talk to them over TCP.

Plain asyncio streams rather than an HTTP framework: a hang must be exact to the
byte (nothing at all; the response's headers only; the start of a message and
some text), and a framework sends its headers when it likes. Used by the tests in
this directory and by ``benchmarks/failover.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

__all__ = ["PARTIAL_TEXT", "AnsweringServer", "HangMode", "HangingServer"]

# "silent": the request is read, nothing is sent back;
# "headers": a 200 event stream's headers, then nothing;
# "after_text": the headers and an Anthropic message's first events with some text.
HangMode = Literal["silent", "headers", "after_text"]
PARTIAL_TEXT = "Half an ans"

_SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"connection: close\r\n\r\n"
)


class _Server:
    def __init__(self) -> None:
        self.requests = 0
        self.first_request_at: float | None = None  # time.perf_counter(), for benchmarks
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            body = await _read_request(reader)
            if body is None:
                return
            self.requests += 1
            if self.first_request_at is None:
                self.first_request_at = time.perf_counter()
            await self._answer(body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: that is its right
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class HangingServer(_Server):
    """Accepts every request, sends what ``mode`` says, then holds until :meth:`stop`.

    ``hanging`` is set once a request has been read and its partial answer sent.
    """

    def __init__(self, mode: HangMode = "silent") -> None:
        super().__init__()
        self.mode = mode
        self.hanging = asyncio.Event()
        self._release = asyncio.Event()

    async def stop(self) -> None:
        self._release.set()
        await super().stop()

    async def _answer(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        if self.mode != "silent":
            writer.write(_SSE_HEADERS)
        if self.mode == "after_text":
            writer.write(anthropic_start(PARTIAL_TEXT))
        await writer.drain()
        self.hanging.set()
        await self._release.wait()


class AnsweringServer(_Server):
    """Answers every Chat Completions request with ``text``: a stream when asked for one."""

    def __init__(self, text: str = "Answered by the fallback.") -> None:
        super().__init__()
        self.text = text

    async def _answer(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        model = str(body.get("model", "gpt-5-mini"))
        usage = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
        if body.get("stream"):
            writer.write(_SSE_HEADERS)
            chunks = [
                _chunk(model, {"role": "assistant", "content": ""}),
                *(_chunk(model, {"content": w}) for w in _pieces(self.text)),
                _chunk(model, {}, finish="stop"),
                {**_chunk(model, {}), "choices": [], "usage": usage},
            ]
            for c in chunks:
                writer.write(f"data: {json.dumps(c)}\n\n".encode())
            writer.write(b"data: [DONE]\n\n")
        else:
            data = json.dumps(
                {
                    "id": "chatcmpl-loopback",
                    "object": "chat.completion",
                    "created": 1767225600,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            ).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
                + data
            )
        await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """One HTTP/1.1 request's JSON body (``None`` if the client left first)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    raw = await reader.readexactly(length) if length else b"{}"
    parsed = json.loads(raw)
    return parsed if isinstance(parsed, dict) else {}


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def anthropic_start(text: str, *, input_tokens: int = 12) -> bytes:
    """An Anthropic stream's first events: the message (reporting ``input_tokens``), a
    text block, ``text``."""
    message: dict[str, Any] = {
        "id": "msg_loopback",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        ),
    ]
    return "".join(f"event: {n}\ndata: {json.dumps(d)}\n\n" for n, d in events).encode()
