"""A loopback OpenAI-compatible model that streams like a real one, for the delivery
benchmarks: the first token after ``first_token_s``, then one token every
``token_every_s``. It records when it wrote each request's first token
(``time.monotonic()``, which every process on the machine shares), so a benchmark can
put the model's first-token time beside what Discord saw in the same run.

Not a test double for correctness (the chaos tests have their own): only timing.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

__all__ = ["StreamingModel", "model_env"]

MODEL = "gpt-5-mini"


def model_env(model: StreamingModel) -> dict[str, str]:
    """Every tier on this model, for a ``coterie run`` subprocess."""
    return {
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "sk-bench-key-for-the-loopback",
        "COTERIE_TIER_FAST": f"openai:{MODEL}",
        "COTERIE_TIER_STANDARD": f"openai:{MODEL}",
        "COTERIE_TIER_SMART": f"openai:{MODEL}",
    }


class StreamingModel:
    def __init__(
        self, *, first_token_s: float = 0.45, token_every_s: float = 0.05, tokens: int = 12
    ) -> None:
        self.first_token_s = first_token_s
        self.token_every_s = token_every_s
        self.tokens = tokens
        #: The last user message's text -> when its first token was written. The
        #: first token is ``"<the message's last word>: word0"``.
        self.first_token_at: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> StreamingModel:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        last = next((m for m in reversed(body.get("messages", [])) if m.get("role") == "user"), {})
        content = last.get("content")
        if isinstance(content, list):  # parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        key = str(content or "")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(self._chunk({"role": "assistant", "content": ""}))
        await asyncio.sleep(self.first_token_s)
        tag = key.split()[-1] if key.split() else "-"
        for i in range(self.tokens):
            if i:
                await asyncio.sleep(self.token_every_s)
            # The first token names the question (its last word), so a benchmark can
            # tell whose answer reached Discord.
            text = f"{tag}: word0 " if i == 0 else f"word{i} "
            await response.write(self._chunk({"content": text}))
            if i == 0:
                self.first_token_at[key] = time.monotonic()
        await response.write(self._chunk({}, "stop"))
        usage = {"prompt_tokens": 50, "completion_tokens": self.tokens, "total_tokens": 62}
        tail = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [],
            "usage": usage,
        }
        await response.write(f"data: {json.dumps(tail)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
