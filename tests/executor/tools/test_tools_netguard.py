"""The SSRF guard with an operator's allowlist: exactly the named hosts and networks
get past it; everything else keeps the public-internet rule."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from executor.tools import BlockedURL, SSRFGuard
from executor.tools.netguard import AllowlistGuard, guarded_request
from tests.executor.tools.tool_fakes import PUBLIC_IP, FakeResolver, RecordingTransport


def _guard(
    resolver: FakeResolver, *, networks: tuple[str, ...] = (), hosts: tuple[str, ...] = ()
) -> AllowlistGuard:
    return AllowlistGuard.of(
        networks=[ipaddress.ip_network(n) for n in networks],
        hosts=hosts,
        base=SSRFGuard(resolver=resolver),
    )


async def test_an_allowed_network_passes_and_its_neighbours_do_not() -> None:
    guard = _guard(FakeResolver(), networks=("127.0.0.1/32",))
    target = await guard.check("http://127.0.0.1:8808/mcp")
    assert str(target.ip) == "127.0.0.1" and target.port == 8808
    with pytest.raises(BlockedURL, match="loopback"):
        await guard.check("http://127.0.0.2:8808/mcp")
    with pytest.raises(BlockedURL, match="loopback"):
        await _guard(FakeResolver()).check("http://127.0.0.1:8808/mcp")


async def test_every_address_of_a_name_must_be_inside() -> None:
    resolver = FakeResolver({"nas.lan": ["192.168.1.10"]})
    guard = _guard(resolver, networks=("192.168.1.0/24",))
    assert str((await guard.check("http://nas.lan/mcp")).ip) == "192.168.1.10"
    # The same name answering one address outside as well: the public rule refuses it.
    resolver.answers["nas.lan"] = ["192.168.1.10", "10.0.0.1"]
    with pytest.raises(BlockedURL, match="private"):
        await guard.check("http://nas.lan/mcp")
    # ... and one rebound to the cloud metadata address.
    resolver.answers["nas.lan"] = ["169.254.169.254"]
    with pytest.raises(BlockedURL, match="link-local"):
        await guard.check("http://nas.lan/mcp")


async def test_a_named_host_passes_whatever_it_resolves_to_and_only_it() -> None:
    resolver = FakeResolver({"searx.lan": ["10.1.2.3"], "evil.lan": ["10.1.2.3"]})
    guard = _guard(resolver, hosts=("searx.lan",))
    assert str((await guard.check("http://searx.lan:8888/search")).ip) == "10.1.2.3"
    with pytest.raises(BlockedURL, match="private"):
        await guard.check("http://evil.lan:8888/search")


async def test_a_public_host_keeps_the_public_rule() -> None:
    guard = _guard(FakeResolver({"example.com": [PUBLIC_IP]}), networks=("10.0.0.0/8",))
    assert str((await guard.check("https://example.com/x")).ip) == PUBLIC_IP
    with pytest.raises(BlockedURL, match="user name or password"):
        await guard.check("http://user:pw@10.0.0.5/")


async def test_a_request_goes_to_the_checked_address_and_follows_no_redirect() -> None:
    resolver = FakeResolver({"api.example.com": [PUBLIC_IP]})
    transport = RecordingTransport(
        lambda r: httpx.Response(302, headers={"location": "http://169.254.169.254/"})
    )
    response = await guarded_request(
        "POST",
        "https://api.example.com/search",
        guard=_guard(resolver),
        json_body={"query": "x"},
        transport=transport,
    )
    assert response.status == 302
    [sent] = transport.requests
    assert sent.url.host == PUBLIC_IP and sent.headers["host"] == "api.example.com"
    assert sent.extensions["sni_hostname"] == "api.example.com"
    assert sent.headers["accept-encoding"] == "identity"


async def test_a_large_answer_is_cut_at_the_cap() -> None:
    resolver = FakeResolver({"api.example.com": [PUBLIC_IP]})
    transport = RecordingTransport(lambda r: httpx.Response(200, content=b"x" * 5000))
    response = await guarded_request(
        "GET",
        "https://api.example.com/",
        guard=_guard(resolver),
        transport=transport,
        max_bytes=1000,
    )
    assert response.truncated and len(response.body) == 1000
