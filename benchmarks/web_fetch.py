"""web_fetch's HTML-to-text: CPU time of hostile and ordinary pages before and after the
extraction moved to a child process with a CPU budget, and a DNS lookup's wait while
slow work fills the event loop's default executor (``loop.getaddrinfo``, as before)
beside the guard's own resolver threads (``SystemResolver``, now).

    .venv/bin/python benchmarks/web_fetch.py

Prints figures, asserts nothing. "before" is the old path: the plain parse and
trafilatura, both on every page, in a thread of the default executor nothing can stop.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import trafilatura

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor import ToolFailed, WebFetcher

PARAGRAPH = "<p>Some words in a paragraph of ordinary text, as an article has.</p>"
PAGES = {
    "hostile: 2 MB of <b>a</b>": "<html><body>" + "<b>a</b>" * 250_000 + "</body></html>",
    "hostile: 2 MB of <div><span>": "<html><body>"
    + "<div><span>x</span></div>" * 80_000
    + "</body></html>",
    "ordinary: 60 KB article": "<html><head><title>T</title></head><body>"
    + PARAGRAPH * 850
    + "</body></html>",
    "ordinary: 1.5 MB article": "<html><head><title>T</title></head><body>"
    + PARAGRAPH * 21_000
    + "</body></html>",
}


class _Plain(HTMLParser):
    """The old fallback's parse (its per-tag work, without the text it kept)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def before(html: str) -> float:
    """CPU seconds of the old extraction (plain parse + trafilatura), in this process."""
    t = time.process_time()
    plain = _Plain()
    plain.feed(html)
    plain.close()
    trafilatura.extract(html, include_comments=False, include_tables=True, favor_recall=True)
    return time.process_time() - t


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


async def after(fetcher: WebFetcher, html: str) -> tuple[float, float, str]:
    """(CPU seconds here + in children, wall seconds, outcome) of the new extraction."""
    t, c, w = time.process_time(), _children_cpu(), time.perf_counter()
    try:
        await fetcher.extract(html, "https://example.org/page")
        outcome = "read"
    except ToolFailed as exc:
        outcome = "stopped (" + str(exc).split(": ", 1)[1][:60] + "…)"
    cpu = time.process_time() - t + _children_cpu() - c
    return cpu, time.perf_counter() - w, outcome


async def dns_wait(resolve: str) -> float:
    """Seconds a lookup of localhost waits while slow work holds every default thread."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    workers = 6  # the default executor's size on 2 cores: min(32, cpus + 4)
    loop.set_default_executor(ThreadPoolExecutor(workers))
    held = [loop.run_in_executor(None, release.wait, 30) for _ in range(workers)]
    # Slow work holds every thread for 1 s, as six concurrent page extractions would.
    loop.call_later(1.0, release.set)
    t = time.perf_counter()
    if resolve == "before":
        await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    else:
        await WebFetcher().guard.resolver("localhost", 80)  # a SystemResolver
    waited = time.perf_counter() - t
    release.set()
    await asyncio.gather(*held)
    return waited


async def main() -> None:
    fetcher = WebFetcher()
    print(
        f"extraction budget: {fetcher.extract_cpu_s} s CPU, {fetcher.extract_timeout_s:g} s "
        f"wall, {fetcher.extract_memory_mb} MB; a child above "
        f"{fetcher.inline_extract_bytes:,} bytes of HTML\n"
    )
    print(f"{'page':32} {'before: CPU s':>14} {'after: CPU s':>13} {'wall s':>7}  outcome")
    for name, html in PAGES.items():
        old = before(html)
        cpu, wall, outcome = await after(fetcher, html)
        print(f"{name:32} {old:14.2f} {cpu:13.2f} {wall:7.2f}  {outcome}")
    print()
    for which in ("before", "after"):
        waited = await dns_wait(which)
        print(f"DNS lookup while slow work holds the default executor, {which}: {waited:.3f} s")


if __name__ == "__main__":
    asyncio.run(main())
