"""A web page's main text: :func:`html_to_text`.

Kept apart from :mod:`executor.tools.builtin` so that the child process ``web_fetch``
runs it in (a large page's extraction can be killed there, see
:meth:`~executor.tools.builtin.WebFetcher.extract`) imports the standard library and
trafilatura, nothing else.
"""

from __future__ import annotations

import html as _html
import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

_SKIP_TAGS = {
    "script", "style", "noscript", "template", "svg", "head", "iframe", "object", "title",
}  # fmt: skip
_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "title",
}  # fmt: skip
_TITLE_SCAN = 200_000  # the title is in the head: look no further than this


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip:
            self._skip -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _title(html: str) -> str:
    """The page's ``<title>``, found with plain string searches (linear, whatever the page)."""
    head = html[:_TITLE_SCAN]
    lower = head.lower()
    start = lower.find("<title")
    if start < 0:
        return ""
    opened = lower.find(">", start)
    end = lower.find("</title", opened)
    if opened < 0 or end < 0:
        return ""
    return " ".join(_html.unescape(head[opened + 1 : end]).split())


def _simple_text(html: str) -> str:
    """The text by a plain HTML parser: the fallback when trafilatura finds nothing."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (
        re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n")
    )
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str, url: str | None = None) -> str:
    """The main text of a page: trafilatura, or a plain extraction when it finds none."""
    import trafilatura  # Why lazily: a heavy import only web_fetch needs

    title = _title(html)
    text = trafilatura.extract(
        html, url=url, include_comments=False, include_tables=True, favor_recall=True
    )
    # Why only now: the plain parse of a 2 MB page costs seconds; most pages never need it.
    body = text.strip() if text else _simple_text(html)
    return f"# {title}\n\n{body}" if title and not body.startswith(title) else body
