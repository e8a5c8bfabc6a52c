"""The SSRF guard with an operator's allowlist, and one guarded request to an API.

The guard of :mod:`executor.tools.ssrf` lets a request reach the public internet
only. Some endpoints an *operator* names live on loopback or the LAN: a SearXNG
instance, an MCP server on the same host. :class:`AllowlistGuard` lets exactly those
through and applies the public-internet rule to everything else:

* ``hosts``: a host name the operator configured (``COTERIE_SEARXNG_URL``'s); any
  address it resolves to is accepted;
* ``networks``: addresses or networks (``allow_networks = ["127.0.0.1/32"]`` of an
  MCP server); a host passes when *every* address it resolves to is inside one.

A host that resolves to one allowed and one other private address is refused by the
public rule, as is any other host. The request still goes to the address that was
checked (no second lookup), like :func:`~executor.tools.ssrf.guarded_get`.

:func:`guarded_request` is one request to a JSON API (a search provider): any method,
no redirect followed, the body read up to ``max_bytes``, the whole bounded in time.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from executor.tools.ssrf import (
    BlockedURL,
    IPAddress,
    SSRFGuard,
    Target,
    parse_ipv4_host,
)

__all__ = ["AllowlistGuard", "ApiResponse", "IPNetwork", "guarded_request"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _literal(host: str) -> IPAddress | None:
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.strip("[]"))
        except ValueError as exc:
            raise BlockedURL(f"the host {host!r} is not a valid IPv6 address") from exc
    return parse_ipv4_host(host)


@dataclass(frozen=True, slots=True)
class AllowlistGuard:
    """:class:`SSRFGuard`'s rule, except for the hosts and networks an operator named."""

    base: SSRFGuard = field(default_factory=SSRFGuard)
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        *,
        networks: Iterable[IPNetwork] = (),
        hosts: Iterable[str] = (),
        base: SSRFGuard | None = None,
    ) -> AllowlistGuard:
        return cls(
            base=base or SSRFGuard(),
            networks=tuple(networks),
            hosts=frozenset(h.lower().rstrip(".") for h in hosts),
        )

    async def check(self, url: str | httpx.URL) -> Target:
        """Raise :class:`BlockedURL` unless ``url`` is allowed; the address to connect to."""
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(str(url).strip())
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise BlockedURL(f"not a valid URL: {url!s:.200}: {exc}") from exc
        host = parsed.host.lower().rstrip(".")
        if parsed.scheme in ("http", "https") and host and not parsed.userinfo:
            allowed = await self._allowed(host, parsed.port, parsed.scheme)
            if allowed is not None:
                port = parsed.port or (443 if parsed.scheme == "https" else 80)
                return Target(url=parsed, host=host, port=port, ip=allowed)
        return await self.base.check(parsed)

    async def _allowed(self, host: str, port: int | None, scheme: str) -> IPAddress | None:
        """The address to use when the allowlist covers ``host``, else None."""
        if not self.hosts and not self.networks:
            return None
        literal = _literal(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                async with asyncio.timeout(self.base.resolve_timeout_s):
                    answers = await self.base.resolver(
                        host, port or (443 if scheme == "https" else 80)
                    )
                addresses = [
                    a if not isinstance(a, str) else ipaddress.ip_address(a.split("%", 1)[0])
                    for a in answers
                ]
            except (TimeoutError, ValueError):
                return None  # the public rule says why
            if not addresses:
                return None
        if host in self.hosts:
            return addresses[0]
        if self.networks and all(any(a in net for net in self.networks) for a in addresses):
            return addresses[0]
        return None


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes
    content_type: str
    truncated: bool

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def guarded_request(
    method: str,
    url: str,
    *,
    guard: AllowlistGuard | SSRFGuard,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str | int] | None = None,
    json_body: Any = None,
    max_bytes: int = 1_000_000,
    timeout_s: float = 15.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ApiResponse:
    """One request through ``guard``; no redirect is followed.

    Raise :class:`BlockedURL` for a refused URL, ``TimeoutError`` past ``timeout_s``,
    ``httpx.HTTPError`` for a transport failure.
    """
    target = await guard.check(url)
    async with (
        asyncio.timeout(timeout_s),
        httpx.AsyncClient(
            transport=transport,
            # Why: a proxy from the environment would do its own DNS lookup.
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
        ) as client,
    ):
        request = client.build_request(
            method,
            target.connect_url,
            params=dict(params) if params else None,
            json=json_body,
            headers={
                "User-Agent": "coterie/0.1",
                "Accept": "application/json",
                # Why identity: a compressed body could inflate far past max_bytes per chunk.
                **(headers or {}),
                "Accept-Encoding": "identity",
                "Host": target.url.netloc.decode("ascii"),
            },
            extensions={"sni_hostname": target.host} if target.url.scheme == "https" else {},
        )
        response = await client.send(request, stream=True)
        try:
            body = bytearray()
            truncated = False
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    del body[max_bytes:]
                    truncated = True
                    break
            media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            return ApiResponse(response.status_code, bytes(body), media, truncated)
        finally:
            await response.aclose()
