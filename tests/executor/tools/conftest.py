"""Fixtures for the tool tests: a caller context, a fake resolver, recording transports."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from executor.agent import Caller, Privilege
from executor.tools import SSRFGuard, ToolContext, WebFetcher
from tests.executor.tools.tool_fakes import PUBLIC_IP, FakeResolver, Handler, RecordingTransport


@pytest.fixture
def ctx() -> ToolContext:
    return ToolContext(run_id="run-1", caller=Caller(user_id="u1", privilege=Privilege.USER))


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver({"example.com": [PUBLIC_IP], "www.example.com": [PUBLIC_IP]})


@pytest.fixture
def make_fetcher(resolver: FakeResolver) -> Callable[..., WebFetcher]:
    def make(handler: Handler, **options: object) -> WebFetcher:
        transport = RecordingTransport(handler)
        return WebFetcher(guard=SSRFGuard(resolver=resolver), transport=transport, **options)  # type: ignore[arg-type]

    return make
