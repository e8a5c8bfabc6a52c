"""Citations are checked, not requested: links an answer gives that the run never saw.

After a run that used a web tool (``web_fetch``, ``web_search``), every http(s) URL in
its answer is compared with the URLs the run *saw*:

* the pages it fetched (``web_fetch``'s ``url`` argument, and the final URL after
  redirects, the first line of its result), when the fetch succeeded;
* the results its searches returned (every URL in a ``web_search`` result);
* the URLs the member's own messages gave (the model did not invent those).

A URL that is none of these is marked ``[unverified]`` in the answer (``result.output``,
which the audit keeps and ``coterie ask --json`` prints), and the answer ends with a
note naming them, which every delivery shows (Discord streams the text before the run
ends, so the note is what reaches the member there). Either way the run's sources go
to the audit as a :class:`~executor.events.SourcesEvent` (``/audit show``).

Two URLs are the same link when they differ only in scheme (http/https), a leading
``www.``, letter case of the host, a default port, a trailing slash or the fragment;
a cited URL without the query string of a seen one also matches (tracking
parameters).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from executor.events import SourcesEvent
from executor.hooks import RunHook, RunState
from executor.messages import ToolCallPart, ToolResultPart
from executor.ports import Clock, RealClock

if TYPE_CHECKING:
    from executor.agent import RunResult

__all__ = ["CitationCheck", "Sources", "find_urls", "mark_unverified", "same_link_key"]

_URL = re.compile(r"https?://[^\s<>\"'`\[\]{}|\\^]+", re.IGNORECASE)
_TRAILING = ".,;:!?*_~'\""
MARK = "[unverified]"


def find_urls(text: str) -> list[tuple[int, int, str]]:
    """Every http(s) URL in ``text`` as ``(start, end, url)``, trailing punctuation and
    an unbalanced closing parenthesis (a Markdown link's) left out."""
    found = []
    for m in _URL.finditer(text):
        url = m.group(0)
        while url:
            if url[-1] in _TRAILING or (url[-1] == ")" and url.count(")") > url.count("(")):
                url = url[:-1]
            else:
                break
        if len(url) > len("https://"):
            found.append((m.start(), m.start() + len(url), url))
    return found


def same_link_key(url: str) -> tuple[str, str]:
    """``(with query, without query)`` keys under which two spellings of a link match."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower().removeprefix("www.")
        port = parts.port
    except ValueError:
        return (url, url)
    if port is not None and port not in (80, 443):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/") or ""
    bare = f"{host}{path}"
    return (f"{bare}?{parts.query}" if parts.query else bare, bare)


@dataclass(slots=True)
class Sources:
    fetched: list[str]
    searched: list[str]
    given: list[str]

    def keys(self) -> set[str]:
        keys: set[str] = set()
        for url in (*self.fetched, *self.searched, *self.given):
            full, _bare = same_link_key(url)
            keys.add(full)
        return keys

    def seen(self, url: str, keys: set[str]) -> bool:
        full, bare = same_link_key(url)
        return full in keys or bare in keys


def mark_unverified(text: str, unverified: Iterable[str]) -> str:
    """``text`` with :data:`MARK` after each occurrence of an unverified URL (after the
    ``>`` or ``)`` that closes it, so ``<url>`` and ``[t](url)`` stay links)."""
    bad = set(unverified)
    out: list[str] = []
    last = 0
    for _start, end, url in find_urls(text):
        if url not in bad:
            continue
        stop = end
        if stop < len(text) and text[stop] in ">)":
            stop += 1
        out.append(text[last:stop])
        out.append(f" {MARK}")
        last = stop
    out.append(text[last:])
    return "".join(out)


class CitationCheck(RunHook):
    """Marks the links of an answer that the run neither fetched nor found by search."""

    def __init__(
        self,
        *,
        fetch_tools: Iterable[str] = ("web_fetch",),
        search_tools: Iterable[str] = ("web_search",),
        note_limit: int = 5,
        clock: Clock | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else RealClock()
        self.fetch_tools = frozenset(fetch_tools)
        self.search_tools = frozenset(search_tools)
        self.note_limit = note_limit

    def sources(self, state: RunState) -> Sources | None:
        """What the run saw; None when it used no web tool."""
        calls: dict[str, ToolCallPart] = {}
        fetched: list[str] = []
        searched: list[str] = []
        given: list[str] = []
        used = False
        for message in state.messages:
            for part in message.parts:
                if isinstance(part, ToolCallPart):
                    calls[part.id] = part
                    used = used or part.name in self.fetch_tools | self.search_tools
                elif isinstance(part, ToolResultPart):
                    call = calls.get(part.tool_call_id)
                    if call is None or part.is_error:
                        continue
                    if call.name in self.fetch_tools:
                        url = call.arguments.get("url")
                        if isinstance(url, str):
                            fetched.append(url.strip())
                        first = part.content.split("\n", 1)[0]
                        fetched.extend(u for _s, _e, u in find_urls(first))
                    elif call.name in self.search_tools:
                        searched.extend(u for _s, _e, u in find_urls(part.content))
            if message.role == "user" and message.text:
                given.extend(u for _s, _e, u in find_urls(message.text))
        if not used:
            return None
        return Sources(
            fetched=list(dict.fromkeys(fetched)),
            searched=list(dict.fromkeys(searched)),
            given=list(dict.fromkeys(given)),
        )

    async def before_finish(self, state: RunState, result: RunResult) -> None:
        sources = self.sources(state)
        if sources is None:
            return
        keys = sources.keys()
        cited = list(dict.fromkeys(u for _s, _e, u in find_urls(result.output)))
        unverified = [u for u in cited if not sources.seen(u, keys)]
        if unverified:
            result.output = mark_unverified(result.output, unverified)
            shown = ", ".join(f"<{u}>" for u in unverified[: self.note_limit])
            more = len(unverified) - self.note_limit
            if more > 0:
                shown += f" and {more} more"
            note = (
                f"⚠ Unverified link{'s' if len(unverified) > 1 else ''} (this run neither "
                f"read {'them' if len(unverified) > 1 else 'it'} nor found "
                f"{'them' if len(unverified) > 1 else 'it'} by search): {shown}"
            )
            result.note = f"{result.note}\n{note}" if result.note else note
        if state.emit is not None:
            await state.emit(
                SourcesEvent(
                    run_id=state.run_id,
                    at=self.clock.now(),
                    step=state.steps,
                    fetched=tuple(sources.fetched),
                    searched=tuple(sources.searched),
                    unverified=tuple(unverified),
                )
            )
