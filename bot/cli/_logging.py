"""Logs for operators: one line per event, ``key=value`` (logfmt) or JSON, to stderr.

* ``COTERIE_LOG_LEVEL`` (INFO) sets coterie's own loggers; ``COTERIE_LOG_LIBRARIES``
  (WARNING) every other one (discord.py, httpx, Alembic, SQLAlchemy, the SDKs), so a
  model request or a migration step is not a line unless asked for. discord.py's
  "voice will NOT be supported" warnings (coterie has no voice) are dropped unless
  the libraries are logged at INFO or below.
* ``COTERIE_LOG_FORMAT``: ``logfmt`` (``ts=... level=info logger=coterie msg="..."``)
  or ``json`` (one object a line). A traceback stays on its event's line (``exc=``).
* Never a secret: the configured token, keys and the passwords in the database and
  base URLs, a URL's credentials (``http://user:pass@proxy`` -> ``http://[redacted]@proxy``,
  :func:`hide_userinfo`), and anything that looks like a key or a bot token
  (:func:`executor.redaction.scrub`) are replaced in every record the handler writes,
  the libraries' included (httpx logs each request's URL at INFO): in the message with
  its arguments, the extra fields, the exception text and the stack.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from executor.redaction import excerpt

__all__ = ["OWN_LOGGERS", "Formatter", "hide_userinfo", "setup_logging"]

#: Top-level loggers that are coterie's own; every other logger is a library's.
OWN_LOGGERS = ("coterie", "bot", "commands", "adapters", "personas", "skills", "executor")

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)
_VOICE = "voice will NOT be supported"
REDACTED = "[redacted]"


# A URL's userinfo: everything between "scheme://" and the last "@" of its authority.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#]+@")


def hide_userinfo(text: str) -> str:
    """``http://user:pass@host`` -> ``http://[redacted]@host``: a URL's credentials
    (a proxy's, a database's) never reach a log line or the terminal."""
    return _USERINFO.sub(rf"\1{REDACTED}@", text)


def scrub(text: str) -> str:
    """Secret-looking values (keys, bot tokens, URL credentials) out of ``text``, uncapped."""
    return excerpt(hide_userinfo(text), sys.maxsize)


class Formatter(logging.Formatter):
    """One line per record, secrets replaced, as logfmt or JSON."""

    def __init__(self, *, json_lines: bool = False, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.json_lines = json_lines
        # Longest first: a key that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return scrub(text)

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self.redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                fields[key] = self.redact(str(value)) if isinstance(value, str) else value
        if record.exc_info:
            fields["exc"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            fields["exc"] = self.redact(record.exc_text)
        if record.stack_info:
            fields["stack"] = self.redact(self.formatStack(record.stack_info))
        if self.json_lines:
            return json.dumps(fields, ensure_ascii=False, default=str)
        return " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\n\r\t\\'):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped.replace(chr(9), chr(92) + "t")}"'


class _DropVoiceWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("discord") and _VOICE in str(record.msg))


def setup_logging(
    settings: Any = None,
    *,
    level: str | None = None,
    libraries: str | None = None,
    json_lines: bool | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Configure the root logger once for this process; returns the handler.

    ``settings`` (a ``Settings``) gives the levels, the format and the secrets to
    redact; keyword arguments override it.
    """
    own_level = (level or getattr(settings, "log_level", None) or "INFO").upper()
    lib_level = (libraries or getattr(settings, "log_libraries", None) or "WARNING").upper()
    if json_lines is None:
        json_lines = getattr(settings, "log_format", "logfmt") == "json"
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(Formatter(json_lines=json_lines, secrets=_secrets_of(settings)))
    if logging.getLevelName(lib_level) > logging.INFO:
        handler.addFilter(_DropVoiceWarnings())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_coterie", False):
            root.removeHandler(old)
    handler._coterie = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(lib_level)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own_level)
    logging.captureWarnings(True)
    return handler


def _secrets_of(settings: Any) -> list[str]:
    if settings is None:
        return []
    out: list[str] = []
    for name in ("discord_token", "anthropic_api_key", "openai_api_key"):
        value = getattr(settings, name, None)
        if value is not None and hasattr(value, "get_secret_value"):
            out.append(value.get_secret_value())
    import os

    for var in ("OPENROUTER_API_KEY",):
        if os.environ.get(var):
            out.append(os.environ[var])
    for name in ("database_url", "openai_base_url", "anthropic_base_url"):
        out.extend(_url_secrets(getattr(settings, name, None) or ""))
    return out


def _url_secrets(url: str) -> list[str]:
    """The password in ``url``'s userinfo, as written and percent-decoded."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []
