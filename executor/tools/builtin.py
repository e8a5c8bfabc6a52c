"""The built-in tools: ``web_fetch``, ``current_time`` and ``calculator``.

``builtin_tools()`` builds them (nothing is built at import time) and
``default_registry()`` puts them in a :class:`ToolRegistry`. The web fetcher and
the clock are injectable for tests.

Every failure a model should hear about is raised as
:class:`~executor.errors.ToolRetry` (fix the call: a bad expression, an unknown
timezone, a refused URL) or :class:`~executor.errors.ToolFailed` (the call was
fine, the world was not: a timeout, an HTTP error, a page that is not text);
anything else is a bug, logged, and the model hears only that the tool failed.
"""

from __future__ import annotations

import ast
import asyncio
import codecs
import contextlib
import math
import operator
import ssl
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from executor.errors import ToolFailed, ToolRetry
from executor.tools.htmltext import html_to_text
from executor.tools.isolation import CPULimitExceeded, run_in_subprocess
from executor.tools.registry import Tool, ToolRegistry, tool
from executor.tools.ssrf import SSRFGuard, guarded_get

__all__ = [
    "WebFetcher",
    "builtin_tools",
    "calculate",
    "calculator_tool",
    "current_time_tool",
    "default_registry",
    "html_to_text",
    "web_fetch_tool",
]

# --- calculator -----------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 500
# Why 10,000 bits (about 3,000 digits): big enough for any sum a person asks,
# small enough that no chain of operations costs noticeable CPU, and below
# Python's 4,300-digit limit on int -> str.
MAX_INT_BITS = 10_000
MAX_FACTORIAL = 1_000

Number = int | float


class CalculationError(ToolRetry):
    """A calculator error worded for the model."""


def _check_int(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculationError("the result is too large (over about 3,000 digits)")
    return value


def _pow(a: Number, b: Number) -> Number:
    # Why: 9**9**9 would take minutes and gigabytes; estimate the size first.
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and b > 0
        and abs(a) > 1
        and b * (abs(a).bit_length() - 1) > MAX_INT_BITS
    ):
        raise CalculationError("the result is too large (over about 3,000 digits)")
    result: Any = operator.pow(a, b)
    if isinstance(result, complex):
        raise CalculationError("the result is not a real number")
    return result  # type: ignore[no-any-return]


def _mul(a: Number, b: Number) -> Number:
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1
    ):
        raise CalculationError("the result is too large (over about 3,000 digits)")
    return a * b


def _factorial(n: Number) -> Number:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculationError("factorial needs a whole number >= 0")
    if n > MAX_FACTORIAL:
        raise CalculationError(f"factorial is limited to n <= {MAX_FACTORIAL}")
    return math.factorial(n)


def _log(x: Number, base: Number | None = None) -> Number:
    return math.log(x) if base is None else math.log(x, base)


_BINOPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _pow,
}
_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": _log,
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "degrees": math.degrees,
    "radians": math.radians,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": _factorial,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculationError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            hint = "; use ** for powers" if isinstance(node.op, ast.BitXor) else ""
            raise CalculationError(f"the operator {type(node.op).__name__} is not supported{hint}")
        return _check_int(op(_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculationError(
            f"unknown name {node.id!r}; constants: {', '.join(sorted(_CONSTANTS))}"
        )
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        fn = _FUNCTIONS.get(name or "")
        if fn is None or node.keywords:
            raise CalculationError(
                f"unknown function {name or ast.unparse(node.func)!r}; "
                f"functions: {', '.join(sorted(_FUNCTIONS))}"
            )
        args = [_eval(a) for a in node.args]
        try:
            return _check_int(fn(*args))
        except TypeError as exc:
            raise CalculationError(f"{name}: {exc}") from None
        except ValueError as exc:
            raise CalculationError(f"{name}: {exc}") from None
    raise CalculationError(f"{type(node).__name__} is not allowed in an expression")


def _format(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        raise CalculationError("the result is not a finite number")
    return f"{value:.15g}"


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression without ``eval``: parsed with :mod:`ast`
    and evaluated over a whitelist of nodes. Raise :class:`CalculationError`."""
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        raise CalculationError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculationError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculationError(f"cannot parse {text!r}: {exc.msg}") from None
    except ValueError:  # a NUL character
        raise CalculationError("the expression holds a character that is not allowed") from None
    except (MemoryError, RecursionError):
        raise CalculationError("the expression is nested too deeply") from None
    try:
        return _format(_eval(tree))
    except ZeroDivisionError:
        raise CalculationError("division by zero") from None
    except OverflowError:
        raise CalculationError("the result is too large") from None
    except RecursionError:
        raise CalculationError("the expression is nested too deeply") from None


def calculator_tool() -> Tool:
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression exactly (integers) or to 15 digits (decimals).

        Supports + - * / // % ** and parentheses, the constants pi, e and tau, and
        the functions sqrt, exp, log(x[, base]), ln, log10, log2, sin, cos, tan,
        asin, acos, atan, degrees, radians, floor, ceil, abs, round, min, max and
        factorial.

        Args:
            expression: the expression, e.g. "(1 + 2) * sqrt(16) / 3"
        """
        return calculate(expression)

    # Why inline: the evaluation is bounded (expression length, integer size),
    # so it finishes in microseconds and a thread hop would cost more.
    return tool(calculator, isolation="inline", timeout_s=5.0, status="calculating", read_only=True)


# --- current_time -----------------------------------------------------------------------

Clock = Callable[[], datetime]


def _zone(name: str) -> tzinfo:
    key = name.strip()
    if key.upper() in ("UTC", "Z", "GMT", "ZULU", ""):
        return UTC
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolRetry(
            f"unknown timezone {name!r}; use an IANA name such as 'Europe/Paris', "
            "'America/New_York', 'Asia/Tokyo' or 'UTC'"
        ) from None


def current_time_tool(clock: Clock | None = None) -> Tool:
    now = clock or (lambda: datetime.now(UTC))

    def current_time(timezone: str = "UTC") -> str:
        """The current date and time in a timezone.

        Args:
            timezone: an IANA timezone name such as "Europe/Paris"; UTC by default
        """
        tz = _zone(timezone)
        moment = now()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        local = moment.astimezone(tz)
        offset = local.strftime("%z")
        return (
            f"{local.isoformat(timespec='seconds')} ({local:%A}, {local.tzname()}, "
            f"UTC{offset[:3]}:{offset[3:]}) in {getattr(tz, 'key', 'UTC')}"
        )

    return tool(
        current_time,
        isolation="inline",
        timeout_s=5.0,
        status="checking the time",
        read_only=True,
    )


# --- web_fetch ----------------------------------------------------------------------------

_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_TEXT_TYPES = {"text/plain", "text/markdown", "text/x-markdown", "text/csv", "application/json"}


def _decode(body: bytes, charset: str | None) -> str:
    encoding = "utf-8"
    if charset:
        with contextlib.suppress(LookupError):
            encoding = codecs.lookup(charset).name
    return body.decode(encoding, errors="replace")


class WebFetcher:
    """``web_fetch``'s engine: the SSRF guard, caps, and HTML to text.

    Turning HTML into text costs CPU in proportion to the markup, and a page of
    many small tags costs seconds (a 2 MB one took ~6 s). A thread running that
    cannot be stopped, so a page over ``inline_extract_bytes`` is extracted in a
    child process (:mod:`executor.tools.isolation`) with ``extract_cpu_s`` seconds
    of CPU, ``extract_memory_mb`` of memory and ``extract_timeout_s`` of wall time;
    past any of them the child is stopped and the model hears why. A smaller page
    (at most a few hundred milliseconds, whatever its markup) is extracted in a
    thread, as a process would cost more than the page.
    """

    def __init__(
        self,
        *,
        guard: SSRFGuard | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        max_bytes: int = 2_000_000,
        max_redirects: int = 5,
        total_timeout_s: float = 20.0,
        inline_extract_bytes: int = 64_000,
        extract_cpu_s: int = 4,
        extract_memory_mb: int | None = 1024,
        extract_timeout_s: float = 10.0,
    ) -> None:
        self.guard = guard or SSRFGuard()
        self.transport = transport
        # Why once, and on the first fetch: an SSL context costs ~15 ms (loading the CA
        # bundle), which a start (or a `coterie ask` that fetches nothing) need not pay.
        self._verify: ssl.SSLContext | bool | None = None if verify is True else verify
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.total_timeout_s = total_timeout_s
        self.inline_extract_bytes = inline_extract_bytes
        self.extract_cpu_s = extract_cpu_s
        self.extract_memory_mb = extract_memory_mb
        self.extract_timeout_s = extract_timeout_s

    async def extract(self, html: str, url: str) -> str:
        """``html_to_text`` within its budget; raise :class:`ToolFailed` past it."""
        if len(html) <= self.inline_extract_bytes:
            return await asyncio.to_thread(html_to_text, html, url)
        try:
            text: str = await run_in_subprocess(
                html_to_text,
                {"html": html, "url": url},
                timeout_s=self.extract_timeout_s,
                max_cpu_s=self.extract_cpu_s,
                max_memory_mb=self.extract_memory_mb,
            )
        except CPULimitExceeded:
            raise ToolFailed(
                f"{url} is too heavy to read: turning its HTML into text took more than "
                f"{self.extract_cpu_s} s of CPU and was stopped"
            ) from None
        except TimeoutError:
            raise ToolFailed(
                f"{url} is too heavy to read: turning its HTML into text took longer "
                f"than {self.extract_timeout_s:g} s and was stopped"
            ) from None
        except MemoryError:
            raise ToolFailed(
                f"{url} is too heavy to read: turning its HTML into text needed more "
                f"than {self.extract_memory_mb} MB and was stopped"
            ) from None
        return text

    @property
    def verify(self) -> ssl.SSLContext | bool:
        if self._verify is None:
            self._verify = httpx.create_ssl_context()
        return self._verify

    async def fetch_text(self, url: str) -> str:
        try:
            result = await guarded_get(
                url,
                guard=self.guard,
                transport=self.transport,
                verify=self.verify,
                max_bytes=self.max_bytes,
                max_redirects=self.max_redirects,
                total_timeout_s=self.total_timeout_s,
            )
        except TimeoutError:
            raise ToolFailed(
                f"fetching {url} took longer than {self.total_timeout_s:g} s"
            ) from None
        except httpx.InvalidURL as exc:
            raise ToolRetry(f"not a valid URL: {url:.200}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ToolFailed(f"could not fetch {url}: {type(exc).__name__}: {exc}") from None
        if result.status >= 400:
            raise ToolFailed(f"{result.url} answered HTTP {result.status}")
        media = result.content_type
        if not media and result.body.lstrip()[:512].lower().startswith(
            (b"<!doctype html", b"<html")
        ):
            media = "text/html"
        if media in _HTML_TYPES:
            text = await self.extract(_decode(result.body, result.charset), result.url)
        elif media in _TEXT_TYPES or (not media and b"\x00" not in result.body[:1024]):
            text = _decode(result.body, result.charset)
        else:
            raise ToolFailed(
                f"{result.url} is {media or 'binary data'}, not a web page; "
                "web_fetch reads HTML and plain text only"
            )
        note = (
            f"\n\n[the page is longer than {self.max_bytes:,} bytes; only its start was read]"
            if result.truncated
            else ""
        )
        return f"{result.url}\n\n{text.strip() or '(the page has no readable text)'}{note}"


def web_fetch_tool(fetcher: WebFetcher | None = None) -> Tool:
    engine = fetcher or WebFetcher()

    async def web_fetch(url: str) -> str:
        """Read a public web page and return its main text (HTML is converted to text).

        Args:
            url: the page's full http or https address
        """
        return await engine.fetch_text(url)

    return tool(
        web_fetch,
        timeout_s=engine.total_timeout_s + engine.extract_timeout_s,
        max_result_chars=20_000,
        status="reading {host}",
        read_only=True,
    )


# --- putting them together ---------------------------------------------------------------


def builtin_tools(*, fetcher: WebFetcher | None = None, clock: Clock | None = None) -> list[Tool]:
    """Fresh instances of every built-in tool."""
    return [web_fetch_tool(fetcher), current_time_tool(clock), calculator_tool()]


def default_registry(
    enabled: Iterable[str] | None = None,
    *,
    fetcher: WebFetcher | None = None,
    clock: Clock | None = None,
) -> ToolRegistry:
    """A registry of the built-in tools; ``enabled`` (None: all) is the deployment's choice."""
    return ToolRegistry(builtin_tools(fetcher=fetcher, clock=clock), enabled=enabled)
