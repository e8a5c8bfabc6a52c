"""The SSRF guard and the guarded GET, all hermetic (fake resolver, mock transport)."""

from __future__ import annotations

import gzip
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from executor.tools import BlockedURL, SSRFGuard, WebFetcher, forbidden_reason, guarded_get
from executor.tools.ssrf import parse_ipv4_host
from tests.executor.tools.tool_fakes import PUBLIC_IP, FakeResolver, RecordingTransport

# --- address classes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "private"),
        ("100.64.0.1", "shared"),
        ("192.0.2.1", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),  # documentation
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("64:ff9b:1::1", "NAT64"),
        ("::127.0.0.2", "IPv4-compatible"),
    ],
)
def test_forbidden_addresses(address: str, reason: str) -> None:
    why = forbidden_reason(ipaddress.ip_address(address))
    assert why is not None and reason in why


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_allow_loopback_allows_only_loopback() -> None:
    assert forbidden_reason(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert forbidden_reason(ipaddress.ip_address("::1"), allow_loopback=True) is None
    assert forbidden_reason(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) is not None
    assert forbidden_reason(ipaddress.ip_address("169.254.1.1"), allow_loopback=True) is not None


# --- host spellings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_odd_ipv4_spellings_are_normalised(host: str, address: str) -> None:
    assert parse_ipv4_host(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["example.com", "0x7f.example", "1e3.com", "cafe", "a1"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ipv4_host(host) is None


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.1.1.1", "09.0.0.1", "1.2.3.0x100", "a.1", "4294967296"]
)
def test_malformed_numeric_hosts_are_refused(host: str) -> None:
    with pytest.raises(BlockedURL):
        parse_ipv4_host(host)


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0x7f000001:8080/admin",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://0.0.0.0:22/",
        "http://localhost/",
        "http://api.localhost/",
        "HTTP://LOCALHOST./",
    ],
)
async def test_the_guard_refuses_internal_urls_before_any_dns(url: str) -> None:
    resolver = FakeResolver({"localhost": ["127.0.0.1"], "api.localhost": ["127.0.0.1"]})
    with pytest.raises(BlockedURL, match=r"refused|loopback name|not a valid"):
        await SSRFGuard(resolver=resolver).check(url)
    assert resolver.calls == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/file", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("gopher://example.com/", "only http and https"),
        ("/relative/path", "only http and https"),
        ("http://user:secret@example.com/", "user name or password"),
        ("http:///nohost", "no host"),
    ],
)
async def test_the_guard_refuses_other_schemes_and_credentials(url: str, message: str) -> None:
    with pytest.raises(BlockedURL, match=message):
        await SSRFGuard(resolver=FakeResolver({"example.com": [PUBLIC_IP]})).check(url)


async def test_one_private_address_in_the_dns_answer_is_enough_to_refuse() -> None:
    resolver = FakeResolver({"mixed.example": [PUBLIC_IP, "10.0.0.7"]})
    with pytest.raises(
        BlockedURL, match=r"mixed\.example resolves to 10\.0\.0\.7, a private address"
    ):
        await SSRFGuard(resolver=resolver).check("https://mixed.example/")


async def test_a_name_resolving_to_a_mapped_loopback_is_refused() -> None:
    resolver = FakeResolver({"sneaky.example": ["::ffff:127.0.0.1"]})
    with pytest.raises(BlockedURL, match="loopback"):
        await SSRFGuard(resolver=resolver).check("http://sneaky.example/")


async def test_an_unresolvable_name_is_refused() -> None:
    with pytest.raises(BlockedURL, match="cannot resolve"):
        await SSRFGuard(resolver=FakeResolver()).check("http://nowhere.example/")


async def test_a_public_name_passes_and_keeps_its_host() -> None:
    resolver = FakeResolver({"example.com": [PUBLIC_IP]})
    target = await SSRFGuard(resolver=resolver).check("https://Example.COM:8443/a?b=1")
    assert (target.host, target.port, str(target.ip)) == ("example.com", 8443, PUBLIC_IP)
    assert str(target.connect_url) == f"https://{PUBLIC_IP}:8443/a?b=1"
    assert resolver.calls == [("example.com", 8443)]


# --- the guarded GET -------------------------------------------------------------------


async def test_connects_to_the_checked_address_with_the_original_host_and_sni(
    resolver: FakeResolver,
) -> None:
    transport = RecordingTransport(
        lambda r: httpx.Response(200, text="hi", headers={"content-type": "text/plain"})
    )
    result = await guarded_get(
        "https://example.com/page?q=1", guard=SSRFGuard(resolver=resolver), transport=transport
    )
    assert result.body == b"hi" and result.url == "https://example.com/page?q=1"
    (request,) = transport.requests
    assert request.url.host == PUBLIC_IP  # no second lookup: the checked address
    assert request.headers["host"] == "example.com"
    assert request.extensions["sni_hostname"] == "example.com"
    assert resolver.calls == [("example.com", 443)]


async def test_a_redirect_to_a_private_host_is_refused(resolver: FakeResolver) -> None:
    resolver.answers["internal.example"] = ["10.0.0.5"]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://internal.example/admin"})

    transport = RecordingTransport(handler)
    with pytest.raises(BlockedURL, match=r"internal\.example resolves to 10\.0\.0\.5"):
        await guarded_get(
            "https://example.com/", guard=SSRFGuard(resolver=resolver), transport=transport
        )
    assert [r.url.host for r in transport.requests] == [PUBLIC_IP]


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",
        "http://[::1]/",
        "file:///etc/passwd",
    ],
)
async def test_a_redirect_to_an_internal_literal_is_refused(
    resolver: FakeResolver, location: str
) -> None:
    transport = RecordingTransport(lambda r: httpx.Response(301, headers={"location": location}))
    with pytest.raises(BlockedURL):
        await guarded_get(
            "http://example.com/", guard=SSRFGuard(resolver=resolver), transport=transport
        )
    assert len(transport.requests) == 1


async def test_relative_redirects_are_followed_and_checked(resolver: FakeResolver) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(308, headers={"location": "/new"})
        if request.url.path == "/new":
            return httpx.Response(302, headers={"location": "https://www.example.com/final"})
        return httpx.Response(200, text="final", headers={"content-type": "text/plain"})

    transport = RecordingTransport(handler)
    result = await guarded_get(
        "http://example.com/old", guard=SSRFGuard(resolver=resolver), transport=transport
    )
    assert result.url == "https://www.example.com/final"
    assert result.redirects == ["http://example.com/new", "https://www.example.com/final"]
    assert [r.headers["host"] for r in transport.requests] == [
        "example.com",
        "example.com",
        "www.example.com",
    ]


async def test_too_many_redirects(resolver: FakeResolver) -> None:
    transport = RecordingTransport(lambda r: httpx.Response(302, headers={"location": "/again"}))
    with pytest.raises(BlockedURL, match="too many redirects"):
        await guarded_get(
            "http://example.com/",
            guard=SSRFGuard(resolver=resolver),
            transport=transport,
            max_redirects=3,
        )
    assert len(transport.requests) == 4


async def test_the_body_is_capped_while_streaming(resolver: FakeResolver) -> None:
    sent: list[int] = []
    chunk = b"a" * 65_536

    async def body() -> AsyncIterator[bytes]:
        for i in range(200):  # 13 MB on offer
            sent.append(i)
            yield chunk

    transport = RecordingTransport(
        lambda r: httpx.Response(200, content=body(), headers={"content-type": "text/plain"})
    )
    result = await guarded_get(
        "http://example.com/big",
        guard=SSRFGuard(resolver=resolver),
        transport=transport,
        max_bytes=200_000,
    )
    assert result.truncated and len(result.body) == 200_000
    assert len(sent) <= 5  # it stopped reading, it did not drain 13 MB


async def test_a_gzip_bomb_is_inflated_only_up_to_the_cap(resolver: FakeResolver) -> None:
    bomb = gzip.compress(b"\0" * 20_000_000)
    assert len(bomb) < 100_000
    transport = RecordingTransport(
        lambda r: httpx.Response(
            200, content=bomb, headers={"content-type": "text/plain", "content-encoding": "gzip"}
        )
    )
    result = await guarded_get(
        "http://example.com/",
        guard=SSRFGuard(resolver=resolver),
        transport=transport,
        max_bytes=1_000_000,
    )
    assert result.truncated and len(result.body) == 1_000_000


async def test_gzip_and_raw_deflate_bodies_are_decoded(resolver: FakeResolver) -> None:
    import zlib

    raw = zlib.compressobj(wbits=-15)
    deflated = raw.compress(b"hello deflate") + raw.flush()
    for encoding, content, expected in [
        ("gzip", gzip.compress(b"hello gzip"), b"hello gzip"),
        ("deflate", zlib.compress(b"hello zlib"), b"hello zlib"),
        ("deflate", deflated, b"hello deflate"),
    ]:

        def answer(request: httpx.Request, c: bytes = content, e: str = encoding) -> httpx.Response:
            return httpx.Response(200, content=c, headers={"content-encoding": e})

        transport = RecordingTransport(answer)
        result = await guarded_get(
            "http://example.com/", guard=SSRFGuard(resolver=resolver), transport=transport
        )
        assert result.body == expected and not result.truncated


async def test_total_time_is_bounded(resolver: FakeResolver) -> None:
    import asyncio

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    fetcher = WebFetcher(
        guard=SSRFGuard(resolver=resolver), transport=RecordingTransport(hang), total_timeout_s=0.1
    )
    from executor.errors import ToolFailed

    with pytest.raises(ToolFailed, match=r"took longer than 0.1 s"):
        await fetcher.fetch_text("http://example.com/")


# --- a real socket on loopback: the connect-to-IP path of httpx itself works ---------------


@pytest.fixture
async def loopback_server() -> AsyncIterator[Callable[[], tuple[int, list[str]]]]:
    from aiohttp import web

    seen_hosts: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen_hosts.append(request.headers["Host"])
        return web.Response(
            text="<html><head><title>Local</title></head><body><p>served</p></body></html>",
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield lambda: (port, seen_hosts)
    await runner.cleanup()


async def test_real_loopback_fetch_sends_the_original_host(
    loopback_server: Callable[[], tuple[int, list[str]]],
) -> None:
    port, seen_hosts = loopback_server()
    resolver = FakeResolver({"site.test": ["127.0.0.1"]})
    # Loopback is allowed here only by the explicit test switch.
    guard = SSRFGuard(resolver=resolver, allow_loopback=True)
    result = await guarded_get(f"http://site.test:{port}/", guard=guard)
    assert b"served" in result.body and result.content_type == "text/html"
    assert seen_hosts == [f"site.test:{port}"]
    with pytest.raises(BlockedURL, match="loopback"):
        await guarded_get(f"http://site.test:{port}/", guard=SSRFGuard(resolver=resolver))
    assert len(seen_hosts) == 1


# --- TLS: connect to the checked IP, verify the certificate against the hostname ------------


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, ssl.SSLContext]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    from aiohttp import web

    cert, key = _self_signed(tmp_path, "secure.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"tls ok for {request.headers['Host']}", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    yield runner.addresses[0][1], client_ctx
    await runner.cleanup()


async def test_tls_to_the_checked_ip_verifies_the_original_hostname(
    tls_server: tuple[int, ssl.SSLContext],
) -> None:
    port, client_ctx = tls_server
    resolver = FakeResolver({"secure.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    guard = SSRFGuard(resolver=resolver, allow_loopback=True)
    result = await guarded_get(f"https://secure.test:{port}/", guard=guard, verify=client_ctx)
    assert result.body == f"tls ok for secure.test:{port}".encode()
    # The same IP under a name the certificate does not cover fails verification:
    # the hostname, not the IP, is what TLS checks.
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|hostname mismatch"):
        await guarded_get(f"https://other.test:{port}/", guard=guard, verify=client_ctx)
