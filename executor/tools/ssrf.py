"""A guard against server-side request forgery, and the one HTTP GET that uses it.

A model may ask ``web_fetch`` for any URL, so every request must reach the
public internet only. The guard:

* accepts only ``http`` and ``https`` URLs without credentials;
* normalises hosts that *look* numeric the way browsers and resolvers read them
  (``2130706433``, ``0177.0.0.1``, ``0x7f.1`` are all 127.0.0.1) before any DNS,
  and refuses a malformed one;
* resolves a hostname once and refuses it if *any* address is loopback,
  private, link-local, multicast, reserved, unspecified, shared (CGNAT) or
  otherwise not global, for IPv4 and IPv6 alike, looking inside IPv4-mapped,
  NAT64 and 6to4 IPv6 addresses;
* connects to the address it checked (no second lookup, so no DNS rebinding
  window) while sending the original ``Host`` header and using the original
  hostname for TLS SNI and certificate verification (httpcore's
  ``sni_hostname`` request extension);
* follows redirects itself, checking every hop, at most ``max_redirects``;
* reads at most ``max_bytes`` of the (decoded) body and bounds the total time.

The resolver and the transport are injectable so tests stay hermetic. The default
resolver (:class:`SystemResolver`) asks the OS on threads of its own, never the
event loop's default executor, so no other work queued there can hold a lookup up
past its timeout.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from executor.errors import ToolRetry

__all__ = [
    "BlockedURL",
    "FetchResult",
    "IPAddress",
    "Resolver",
    "SSRFGuard",
    "SystemResolver",
    "Target",
    "forbidden_reason",
    "guarded_get",
    "parse_ipv4_host",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the host's addresses, as strings or address objects
Resolver = Callable[[str, int], Awaitable[Sequence[str | IPAddress]]]

_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPAT = ipaddress.IPv6Network("::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


class BlockedURL(ToolRetry):
    """The URL may not be fetched; the message says why (and goes to the model)."""


# --- host spelling ----------------------------------------------------------------


def _ipv4_part(part: str) -> int | None:
    """One dotted part as browsers read it: 0x.. hex, 0.. octal, else decimal."""
    if not part:
        return None
    if part[:2].lower() == "0x":
        digits, base = part[2:], 16
        if digits == "":
            return 0
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    try:
        return int(digits, base) if digits.isascii() and digits.isalnum() else None
    except ValueError:
        return None


def parse_ipv4_host(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric-looking host means, or None for a domain name.

    Follows the WHATWG URL standard: a host whose last label is a number must
    be an IPv4 address in one of the legacy spellings (``127.1``, ``2130706433``,
    ``0177.0.0.1``, ``0x7f.0.0.1``); if it is not a valid one, it is refused
    rather than passed to a resolver that may read it differently.
    """
    labels = host.split(".")
    if labels and labels[-1] == "" and len(labels) > 1:
        labels = labels[:-1]
    last = labels[-1] if labels else ""
    if _ipv4_part(last) is None:
        return None  # a domain name
    parts = [_ipv4_part(p) for p in labels]
    if len(parts) > 4 or any(p is None for p in parts):
        raise BlockedURL(f"the host {host!r} is not a valid IPv4 address or domain name")
    nums = [p for p in parts if p is not None]
    if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        raise BlockedURL(f"the host {host!r} is not a valid IPv4 address")
    value = nums[-1]
    for i, n in enumerate(nums[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _literal_address(host: str) -> IPAddress | None:
    """The address a URL host spells directly, or None for a name to resolve."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.strip("[]"))
        except ValueError as exc:
            raise BlockedURL(f"the host {host!r} is not a valid IPv6 address") from exc
    return parse_ipv4_host(host)


# --- address policy -----------------------------------------------------------------


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip in _SHARED, "shared (carrier-grade NAT)"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "non-public"),
    )
    return next((f"a {why} address" for bad, why in checks if bad), None)


def forbidden_reason(ip: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why ``ip`` may not be contacted (``"a loopback address"``), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded: ipaddress.IPv4Address | None = None
        if ip.ipv4_mapped is not None:
            embedded = ip.ipv4_mapped
        elif ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            embedded = ip.sixtofour
        if embedded is not None:
            why = forbidden_reason(embedded, allow_loopback=allow_loopback)
            return f"{why} ({embedded} inside IPv6)" if why else None
        if ip.teredo is not None:
            return "a Teredo tunnel address"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if ip in _IPV4_COMPAT and not ip.is_loopback and not ip.is_unspecified:
            return "a deprecated IPv4-compatible address"
        if allow_loopback and ip.is_loopback:
            return None
        checks = (
            (ip.is_unspecified, "unspecified"),
            (ip.is_loopback, "loopback"),
            (ip.is_link_local, "link-local"),
            (ip.is_site_local, "site-local"),
            (ip.is_multicast, "multicast"),
            (ip.is_private, "private"),
            (ip.is_reserved, "reserved"),
            (not ip.is_global, "non-public"),
        )
        return next((f"a {why} address" for bad, why in checks if bad), None)
    if allow_loopback and ip.is_loopback:
        return None
    return _v4_reason(ip)


# --- resolving ------------------------------------------------------------------------


class SystemResolver:
    """The OS resolver: ``getaddrinfo`` on a small thread pool of its own.

    Why not ``loop.getaddrinfo``: it runs in the loop's default executor, which
    ``asyncio.to_thread`` fills with whatever else is slow (a page's text
    extraction, a chart); a lookup queued behind that work would time out and
    refuse a good URL. The threads start on the first lookup.
    """

    def __init__(self, max_workers: int = 4) -> None:
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    async def __call__(self, host: str, port: int) -> list[str]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="coterie-dns")
        lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = await asyncio.get_running_loop().run_in_executor(self._pool, lookup)
        except socket.gaierror as exc:
            raise BlockedURL(f"cannot resolve {host!r}: {exc.strerror or exc}") from exc
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def close(self) -> None:
        """Stop the threads (a lookup under way finishes; none queued will start)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect (``ip``) and what to call it (``host``)."""

    url: httpx.URL
    host: str
    port: int
    ip: IPAddress

    @property
    def connect_url(self) -> httpx.URL:
        return self.url.copy_with(host=str(self.ip))


@dataclass(frozen=True, slots=True)
class SSRFGuard:
    """The address policy and the resolver.

    ``allow_loopback`` exists for tests against a local server only; nothing in
    a deployment sets it.
    """

    resolver: Resolver = field(default_factory=SystemResolver)
    allow_loopback: bool = False
    resolve_timeout_s: float = 5.0

    async def check(self, url: str | httpx.URL) -> Target:
        """Parse, normalise, resolve and validate ``url``; raise :class:`BlockedURL`."""
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url.strip())
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise BlockedURL(f"not a valid URL: {url!s:.200}: {exc}") from exc
        if parsed.scheme not in ("http", "https"):
            raise BlockedURL(
                f"only http and https URLs can be fetched, not {parsed.scheme or 'a relative'!r} ones"
            )
        if parsed.userinfo:
            raise BlockedURL("URLs with a user name or password are not fetched")
        host = parsed.host.lower().rstrip(".")
        if not host:
            raise BlockedURL(f"the URL {parsed} has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        literal = _literal_address(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            if (host == "localhost" or host.endswith(".localhost")) and not self.allow_loopback:
                raise BlockedURL(f"the host {host!r} is a loopback name")
            try:
                async with asyncio.timeout(self.resolve_timeout_s):
                    answers = await self.resolver(host, port)
            except TimeoutError as exc:
                raise BlockedURL(f"resolving {host!r} timed out") from exc
            try:
                addresses = [
                    a if not isinstance(a, str) else ipaddress.ip_address(a.split("%", 1)[0])
                    for a in answers
                ]
            except ValueError as exc:
                raise BlockedURL(f"the resolver gave a bad address for {host!r}: {exc}") from exc
            if not addresses:
                raise BlockedURL(f"{host!r} has no address")
        for ip in addresses:
            why = forbidden_reason(ip, allow_loopback=self.allow_loopback)
            if why:
                # Why all, not the first: a name answering one public and one
                # private address would otherwise be a coin toss away from the LAN.
                spelled = f"resolves to {ip}" if literal is None else f"is {ip}"
                raise BlockedURL(
                    f"refused: {parsed.host} {spelled}, {why}; "
                    "web_fetch reaches only public internet addresses"
                )
        return Target(url=parsed, host=host, port=port, ip=addresses[0])


# --- the guarded GET -------------------------------------------------------------------


@dataclass(slots=True)
class FetchResult:
    url: str  # the final URL, after redirects
    status: int
    content_type: str  # media type only, lower case ("text/html")
    charset: str | None
    body: bytes
    truncated: bool = False  # the body passed max_bytes and was cut
    redirects: list[str] = field(default_factory=list)


class _BoundedDecoder:
    """Content-Encoding decoding that never inflates past ``limit`` bytes.

    Why not httpx's decoders: they inflate a whole chunk at once, so a small
    gzip bomb becomes gigabytes before any size check can run.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.out = 0
        enc = encoding.strip().lower()
        self._deflate = enc == "deflate"
        self._first = True
        if enc in ("", "identity"):
            self._z: zlib._Decompress | None = None
        elif enc in ("gzip", "x-gzip", "deflate"):
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 32)
        else:
            raise BlockedURL(f"the server used an unsupported content encoding {encoding!r}")

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Decoded bytes (at most up to the limit) and whether the limit was reached."""
        room = self.limit - self.out
        if self._z is None:
            chunk = data[:room]
            self.out += len(chunk)
            return chunk, len(data) > room
        try:
            chunk = self._z.decompress(data, room + 1)
        except zlib.error:
            if self._deflate and self._first:
                # raw deflate without a zlib header (some servers)
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                self._first = False
                return self.feed(data)
            raise BlockedURL("the response body is not valid compressed data") from None
        self._first = False
        over = len(chunk) > room
        chunk = chunk[:room]
        self.out += len(chunk)
        return chunk, over


async def guarded_get(
    url: str,
    *,
    guard: SSRFGuard,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: ssl.SSLContext | bool = True,
    max_bytes: int = 2_000_000,
    max_redirects: int = 5,
    total_timeout_s: float = 20.0,
    headers: dict[str, str] | None = None,
) -> FetchResult:
    """GET ``url`` through the guard. Raise :class:`BlockedURL` for a refused URL
    or hop, ``TimeoutError`` past ``total_timeout_s``, ``httpx.HTTPError`` for a
    transport failure."""
    base_headers = {
        "User-Agent": "coterie-web-fetch/0.1 (+https://github.com/)",
        "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
        "Accept-Encoding": "gzip, deflate",
        **(headers or {}),
    }
    redirects: list[str] = []
    target = await guard.check(url)  # before any client exists: a refusal costs nothing
    async with (
        asyncio.timeout(total_timeout_s),
        httpx.AsyncClient(
            transport=transport,
            verify=verify,
            # Why: a proxy from the environment would do its own DNS lookup.
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(10.0, connect=5.0),
        ) as client,
    ):
        while True:
            request = client.build_request(
                "GET",
                target.connect_url,
                headers={**base_headers, "Host": target.url.netloc.decode("ascii")},
                extensions={"sni_hostname": target.host} if target.url.scheme == "https" else {},
            )
            response = await client.send(request, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECTS or not location:
                    return await _read(response, target, max_bytes, redirects)
                try:
                    next_url = target.url.join(location)
                except (httpx.InvalidURL, ValueError) as exc:
                    raise BlockedURL(f"a redirect to a bad URL: {location!r:.200}") from exc
            finally:
                await response.aclose()
            redirects.append(str(next_url))
            if len(redirects) > max_redirects:
                raise BlockedURL(f"too many redirects (more than {max_redirects}) from {url}")
            # Why every hop: a public page may redirect to http://169.254.169.254/.
            target = await guard.check(next_url)


async def _read(
    response: httpx.Response, target: Target, max_bytes: int, redirects: list[str]
) -> FetchResult:
    content_type = response.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    decoder = _BoundedDecoder(response.headers.get("content-encoding", ""), max_bytes)
    body = bytearray()
    truncated = False
    if response.is_stream_consumed:  # a transport that returned a read response
        content = response.content
        return FetchResult(
            url=str(target.url),
            status=response.status_code,
            content_type=media,
            charset=response.charset_encoding,
            body=content[:max_bytes],
            truncated=len(content) > max_bytes,
            redirects=redirects,
        )
    async for raw in response.aiter_raw():
        chunk, over = decoder.feed(raw)
        body += chunk
        if over:
            truncated = True
            break
    return FetchResult(
        url=str(target.url),
        status=response.status_code,
        content_type=media,
        charset=response.charset_encoding,
        body=bytes(body),
        truncated=truncated,
        redirects=redirects,
    )
