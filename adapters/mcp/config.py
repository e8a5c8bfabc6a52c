"""``[mcp.<name>]`` in ``coterie.toml``: the MCP servers a deployment trusts, and how far.

::

    [mcp.files]                                  # a stdio server, started when first needed
    command = ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/shared"]
    env = { GITHUB_TOKEN = "${GITHUB_TOKEN}" }   # values may name environment variables
    cwd = "/srv"
    tools = ["read_file", "list_directory"]      # deny by default: only these are offered
    timeout_seconds = 30                         # one call; the server is restarted past it

    [mcp.files.tool.read_file]                   # per tool; defaults: admin, approval on
    privilege = "user"                           # user, moderator, admin or owner
    approval = false

    [mcp.notes]                                  # a streamable-HTTP server
    url = "http://127.0.0.1:8808/mcp"
    headers = { Authorization = "Bearer ${NOTES_TOKEN}" }
    allow_networks = ["127.0.0.1/32"]            # past the SSRF guard: loopback, the LAN
    tools = ["search"]

Secrets stay out of the file: ``${NAME}`` in ``env`` and ``headers`` is read from the
environment (and ``.env``) when the server is started, and a missing variable is an
error naming it. A stdio server gets only a small safe environment (``PATH``,
``HOME``, ...) plus its ``env``: never coterie's own keys and tokens.

Nothing here imports the ``mcp`` SDK: reading the config costs nothing.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from executor.agent import Privilege
from executor.errors import ConfigError

__all__ = [
    "IPNetwork",
    "McpServerConfig",
    "ToolPolicy",
    "describe",
    "expand",
    "load_mcp_config",
    "parse_mcp_config",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Why: the model sees "<server>__<tool>", which must match the providers' tool-name rule
# (^[A-Za-z0-9_-]{1,64}$); "__" is the separator, so a server name may not hold it.
_SERVER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*$")
_TOOL_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_VAR_RE = re.compile(r"\$\{([^}]*)\}")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PRIVILEGES = {p.name.lower(): p for p in Privilege}
_SERVER_KEYS = {
    "command",
    "env",
    "cwd",
    "url",
    "headers",
    "allow_networks",
    "tools",
    "tool",
    "timeout_seconds",
    "startup_seconds",
    "max_result_chars",
}
_TOOL_KEYS = {"privilege", "approval", "timeout_seconds"}


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """Who may use one MCP tool: at least ``privilege``, and with approval or not."""

    privilege: Privilege = Privilege.ADMIN
    approval: bool = True
    timeout_s: float | None = None  # None: the server's


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    name: str
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # values may hold ${VAR}
    cwd: Path | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # values may hold ${VAR}
    allow_networks: tuple[IPNetwork, ...] = ()
    tools: tuple[str, ...] = ()
    policies: Mapping[str, ToolPolicy] = field(default_factory=dict)
    timeout_s: float = 30.0
    startup_s: float = 30.0
    max_result_chars: int = 16_000

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "http" if self.url else "stdio"

    @property
    def target(self) -> str:
        """Where the server is, for people (no secret: env and headers are not shown)."""
        return self.url or " ".join(self.command)

    def policy(self, tool: str) -> ToolPolicy:
        return self.policies.get(tool, ToolPolicy())

    def exposed(self, tool: str) -> str:
        """The name the model sees."""
        return f"{self.name}__{tool}"

    def call_timeout(self, tool: str) -> float:
        p = self.policy(tool)
        return p.timeout_s if p.timeout_s is not None else self.timeout_s

    def resolved_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {k: expand(v, environ, f"mcp.{self.name}.env.{k}") for k, v in self.env.items()}

    def resolved_headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {
            k: expand(v, environ, f"mcp.{self.name}.headers.{k}") for k, v in self.headers.items()
        }


def expand(value: str, environ: Mapping[str, str], where: str) -> str:
    """``value`` with each ``${NAME}`` replaced by that environment variable."""

    def sub(m: re.Match[str]) -> str:
        var = m.group(1)
        if var not in environ:
            raise ConfigError(f"{where} needs the environment variable {var}, which is not set")
        return environ[var]

    return _VAR_RE.sub(sub, value)


def load_mcp_config(path: Path | None) -> list[McpServerConfig]:
    """The servers declared in ``path`` (none when there is no file or no ``[mcp]``)."""
    if path is None or not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse_mcp_config(data.get("mcp", {}), where=str(path))


def parse_mcp_config(raw: object, *, where: str = "config") -> list[McpServerConfig]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [mcp] must be a table of servers, [mcp.<name>]")
    return [_server(name, body, f"{where}: mcp.{name}") for name, body in raw.items()]


def _server(name: str, raw: object, key: str) -> McpServerConfig:
    if not _SERVER_RE.match(name) or len(name) > 32:
        raise ConfigError(
            f"{key}: a server name is 1-32 letters, digits, '-' or single '_' "
            "(its tools are offered as <name>__<tool>)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a table")
    unknown = sorted(set(raw) - _SERVER_KEYS)
    if unknown:
        raise ConfigError(
            f"{key}: unknown key {unknown[0]!r}; expected one of {sorted(_SERVER_KEYS)}"
        )
    command = raw.get("command")
    url = raw.get("url")
    if (command is None) == (url is None):
        raise ConfigError(
            f'{key}: give either command = [...] (a stdio server) or url = "..." '
            "(a streamable-HTTP server)"
        )
    cmd: tuple[str, ...] = ()
    if command is not None:
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) and c for c in command)
        ):
            raise ConfigError(f"{key}.command must be a non-empty list of strings")
        cmd = tuple(command)
        for k in ("url", "headers", "allow_networks"):
            if k in raw:
                raise ConfigError(f"{key}.{k} is for a url server, not a command one")
    else:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.url must be an http:// or https:// URL")
        for k in ("env", "cwd"):
            if k in raw:
                raise ConfigError(f"{key}.{k} is for a command server, not a url one")
    tools = raw.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise ConfigError(f"{key}.tools must be a list of tool names")
    for t in tools:
        if not _TOOL_RE.match(t) or len(name) + 2 + len(t) > 64:
            raise ConfigError(
                f"{key}.tools: {t!r} cannot be offered as {name}__{t}: a tool name is letters, "
                "digits, '_' or '-', and the whole at most 64 characters"
            )
    if len(set(tools)) != len(tools):
        raise ConfigError(f"{key}.tools lists a tool twice")
    policies_raw = raw.get("tool", {})
    if not isinstance(policies_raw, dict):
        raise ConfigError(f"{key}.tool must be a table of [{key.split(': ')[-1]}.tool.<name>]")
    policies: dict[str, ToolPolicy] = {}
    for tname, body in policies_raw.items():
        if tname not in tools:
            raise ConfigError(
                f"{key}.tool.{tname} configures a tool that tools = [...] does not list "
                "(only listed tools are offered)"
            )
        policies[tname] = _policy(body, f"{key}.tool.{tname}")
    return McpServerConfig(
        name=name,
        command=cmd,
        env=_strings(raw.get("env", {}), f"{key}.env"),
        cwd=Path(_str(raw["cwd"], f"{key}.cwd")).expanduser() if "cwd" in raw else None,
        url=url,
        headers=_strings(raw.get("headers", {}), f"{key}.headers"),
        allow_networks=_networks(raw.get("allow_networks", []), f"{key}.allow_networks"),
        tools=tuple(tools),
        policies=policies,
        timeout_s=_seconds(raw.get("timeout_seconds", 30.0), f"{key}.timeout_seconds"),
        startup_s=_seconds(raw.get("startup_seconds", 30.0), f"{key}.startup_seconds"),
        max_result_chars=_count(raw.get("max_result_chars", 16_000), f"{key}.max_result_chars"),
    )


def _policy(raw: object, key: str) -> ToolPolicy:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a table")
    unknown = sorted(set(raw) - _TOOL_KEYS)
    if unknown:
        raise ConfigError(
            f"{key}: unknown key {unknown[0]!r}; expected one of {sorted(_TOOL_KEYS)}"
        )
    privilege = raw.get("privilege", "admin")
    if not isinstance(privilege, str) or privilege.strip().lower() not in _PRIVILEGES:
        raise ConfigError(f"{key}.privilege must be one of {', '.join(_PRIVILEGES)}")
    approval = raw.get("approval", True)
    if not isinstance(approval, bool):
        raise ConfigError(f"{key}.approval must be true or false")
    timeout = raw.get("timeout_seconds")
    return ToolPolicy(
        privilege=_PRIVILEGES[privilege.strip().lower()],
        approval=approval,
        timeout_s=_seconds(timeout, f"{key}.timeout_seconds") if timeout is not None else None,
    )


def _str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string")
    return value


def _strings(value: object, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f'{key} must be a table of strings, e.g. {{ NAME = "${{NAME}}" }}')
    for k, v in value.items():
        for var in _VAR_RE.findall(v):
            if not _VAR_NAME_RE.match(var):
                raise ConfigError(f"{key}.{k}: ${{{var}}} is not an environment variable name")
    return dict(value)


def _networks(value: object, key: str) -> tuple[IPNetwork, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{key} must be a list of addresses or networks, e.g. ["127.0.0.1"]')
    out: list[IPNetwork] = []
    for v in value:
        try:
            net = ipaddress.ip_network(v.strip(), strict=False)
        except ValueError as exc:
            raise ConfigError(f"{key}: {v!r} is not an address or network: {exc}") from exc
        # Why: an allowlist entry names the one server's network, not "anywhere".
        if net.prefixlen < (8 if net.version == 4 else 32):
            raise ConfigError(f"{key}: {v!r} is too broad; name the server's own address or LAN")
        out.append(net)
    return tuple(out)


def _seconds(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key} must be a positive number of seconds")
    return float(value)


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive whole number")
    return value


def describe(config: McpServerConfig) -> dict[str, Any]:
    """The server as the CLI shows it: no secret (env and header values are left out)."""
    return {
        "name": config.name,
        "transport": config.transport,
        "target": config.target,
        "env": sorted(config.env),
        "headers": sorted(config.headers),
        "tools": list(config.tools),
    }
