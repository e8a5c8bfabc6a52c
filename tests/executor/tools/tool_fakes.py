"""Fakes for the tool tests: a resolver, a recording transport (imported by name)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import httpx

from executor.tools import BlockedURL


class FakeResolver:
    """A DNS that answers from a dict and remembers every question."""

    def __init__(self, answers: dict[str, Sequence[str]] | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise BlockedURL(f"cannot resolve {host!r}: no such host (fake)")
        return list(self.answers[host])


Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class RecordingTransport(httpx.MockTransport):
    """An ``httpx.MockTransport`` that keeps every request it was sent."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []

        async def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            result = handler(request)
            response = result if isinstance(result, httpx.Response) else await result
            if isinstance(response.stream, httpx.ByteStream):
                # Why: a Response built from bytes arrives already read; a real
                # transport streams, so re-stream its raw (still encoded) bytes.
                return httpx.Response(
                    response.status_code,
                    headers=response.headers,
                    content=_stream(bytes(b"".join(response.stream))),
                )
            return response

        super().__init__(record)


async def _stream(data: bytes, size: int = 65_536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


PUBLIC_IP = "93.184.216.34"  # a documentation-era public address; never contacted
