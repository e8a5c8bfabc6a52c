"""Logs for operators: one line per event (logfmt or JSON), coterie's level and the
libraries' level apart, discord.py's voice warnings dropped, secrets never printed
(in the message or inside an exception's text)."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from bot.cli._logging import OWN_LOGGERS, setup_logging
from bot.settings import Settings

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.secretsecretsecretsecretsecret12"
KEY = "sk-ant-api03-very-secret-key-value"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Where setup_logging writes; the logging configuration is restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in OWN_LOGGERS})
    stream = io.StringIO()
    yield stream
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def _settings(**extra: object) -> Settings:
    return Settings(
        _env_file=None,
        discord_token=SecretStr(TOKEN),
        anthropic_api_key=SecretStr(KEY),
        **extra,  # type: ignore[arg-type]
    )


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_one_logfmt_line_per_event_even_with_a_traceback(logs: io.StringIO) -> None:
    setup_logging(_settings(), stream=logs)
    log = logging.getLogger("coterie.test")
    log.info("coterie ready as %s in %d guilds", "bot", 2)
    try:
        raise ValueError("a bad\nthing")
    except ValueError:
        log.exception("run failed (ref %s)", "ABC123")
    first, second = _lines(logs)
    assert first.startswith("ts=") and " level=info logger=coterie.test " in first
    assert 'msg="coterie ready as bot in 2 guilds"' in first
    assert "level=error" in second and 'exc="Traceback' in second
    assert "\\n" in second  # the traceback's newlines are escaped onto the line


def test_json_lines(logs: io.StringIO) -> None:
    setup_logging(_settings(log_format="json"), stream=logs)
    logging.getLogger("adapters.x").warning("careful", extra={"run_id": "r1"})
    [line] = _lines(logs)
    record = json.loads(line)
    assert record["level"] == "warning" and record["msg"] == "careful"
    assert record["logger"] == "adapters.x" and record["run_id"] == "r1"


def test_secrets_are_redacted_in_messages_and_exceptions(logs: io.StringIO) -> None:
    setup_logging(_settings(), stream=logs)
    log = logging.getLogger("coterie")
    log.warning("token %s and key %s", TOKEN, KEY)
    try:
        raise RuntimeError(f"request failed with Authorization: Bearer {KEY}")
    except RuntimeError:
        log.exception("provider error")
    log.warning("someone else's key sk-proj-abcdefghijklmnop leaked")
    out = logs.getvalue()
    assert TOKEN not in out and KEY not in out and "sk-proj-abcdefghijklmnop" not in out
    assert out.count("[redacted]") >= 4


def test_library_noise_stays_below_warning_unless_asked(logs: io.StringIO) -> None:
    setup_logging(_settings(), stream=logs)
    logging.getLogger("httpx").info("HTTP Request: POST https://api.openai.com/v1 200 OK")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade -> 0001")
    logging.getLogger("discord.client").warning(
        "PyNaCl is not installed, voice will NOT be supported"
    )
    logging.getLogger("discord.gateway").warning("Shard ID None has stopped responding")
    logging.getLogger("executor.run").info("ours")
    out = logs.getvalue()
    assert "HTTP Request" not in out and "Running upgrade" not in out
    assert "voice will NOT be supported" not in out
    assert "stopped responding" in out  # a real warning from a library still shows
    assert "ours" in out


def test_levels_come_from_the_settings(logs: io.StringIO) -> None:
    setup_logging(_settings(log_level="WARNING", log_libraries="INFO"), stream=logs)
    logging.getLogger("coterie").info("not shown")
    logging.getLogger("httpx").info("HTTP Request: shown")
    logging.getLogger("discord.client").warning(
        "davey is not installed, voice will NOT be supported"
    )
    out = logs.getvalue()
    assert "not shown" not in out
    assert "HTTP Request: shown" in out
    assert "voice will NOT be supported" in out  # asked for: libraries at INFO


def test_setting_up_twice_keeps_one_handler(logs: io.StringIO) -> None:
    setup_logging(_settings(), stream=logs)
    setup_logging(_settings(), stream=logs)
    logging.getLogger("coterie").warning("once")
    assert logs.getvalue().count("once") == 1


def test_python_warnings_become_log_lines(logs: io.StringIO) -> None:
    setup_logging(_settings(), stream=logs)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a deprecation", UserWarning, stacklevel=1)
    assert "a deprecation" in logs.getvalue()


# --- a URL's credentials (a proxy in OPENAI_BASE_URL) -------------------------------------

PROXY_PASSWORD = "hunter2-proxy-pass"


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
@pytest.mark.parametrize("libraries", ["INFO", "DEBUG"])
async def test_a_urls_credentials_never_reach_the_log(
    logs: io.StringIO, log_format: str, libraries: str
) -> None:
    """httpx logs each request's URL at INFO, userinfo included: through the real
    logging setup, a request to a loopback server with ``user:pass@`` in its URL."""
    import httpx
    from aiohttp import web

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://proxyuser:{PROXY_PASSWORD}@127.0.0.1:{port}/v1"
    try:
        setup_logging(
            _settings(openai_base_url=url, log_format=log_format, log_libraries=libraries),
            stream=logs,
        )
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/models")).status_code == 200
        log = logging.getLogger("coterie")
        log.info("provider at %s", url)  # in the arguments
        log.warning("unreachable", extra={"base_url": url})  # in an extra field
        try:
            raise ConnectionError(f"cannot connect to {url}")
        except ConnectionError:
            log.exception("provider failed")  # in the exception text
    finally:
        await runner.cleanup()
    out = logs.getvalue()
    assert "HTTP Request: GET http://[redacted]@127.0.0.1" in out
    assert PROXY_PASSWORD not in out and "proxyuser" not in out
    lines = _lines(logs)
    if log_format == "json":
        assert all(json.loads(line) for line in lines)
    assert sum("[redacted]@127.0.0.1" in line for line in lines) >= 4
