"""The deployment files, linted where they cannot be built (no Docker engine in CI):
the Dockerfile is parsed and checked for what the issue asks (a slim base, a non-root
user, the data directory a volume, a health check through ``coterie doctor
--offline``); the systemd unit is parsed and, where ``systemd-analyze`` exists,
verified by it."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions((ROOT / "Dockerfile").read_text())
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert starts, "no FROM"
    return steps[starts[-1] :]


def _args(value: str) -> list[str]:
    if value.startswith("["):
        import json

        parsed: list[str] = json.loads(value)
        return parsed
    return shlex.split(value)


def test_the_image_is_slim_and_runs_coterie_as_a_non_root_user() -> None:
    final = _final_stage()
    base = final[0][1].split()[0]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    users = [value for word, value in final if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    words = [word for word, _ in final]
    assert words.index("USER") < words.index("CMD")
    assert _args(dict(final)["ENTRYPOINT"]) == ["coterie"]
    assert _args(dict(final)["CMD"]) == ["run"]
    assert dict(final).get("STOPSIGNAL") == "SIGTERM"


def test_the_data_directory_is_a_volume_holding_the_database() -> None:
    final = _final_stage()
    volumes = [v for word, value in final if word == "VOLUME" for v in _args(value)]
    assert "/data" in volumes
    env = " ".join(value for word, value in final if word == "ENV")
    assert "DATABASE_URL=sqlite:////data/" in env
    assert dict(final).get("WORKDIR") == "/data"


def test_the_health_check_is_coterie_doctor_offline() -> None:
    final = _final_stage()
    [check] = [value for word, value in final if word == "HEALTHCHECK"]
    _, _, command = check.partition("CMD")
    args = _args(command.strip())
    assert args[:3] == ["coterie", "doctor", "--offline"], args
    assert "--interval=" in check


def test_the_image_copies_every_package_and_installs_it() -> None:
    steps = _instructions((ROOT / "Dockerfile").read_text())
    copied = {
        Path(_args(value)[0]).parts[0]
        for word, value in steps
        if word == "COPY" and not value.startswith("--from")
    }
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied, f"the image misses packages: {packages - copied}"
    runs = " ".join(value for word, value in steps if word == "RUN")
    assert "pip install --no-deps -r requirements.lock" in runs, "the lock's versions, as CI tested"
    assert re.search(r"pip install --no-deps \.(\s|$)", runs), "the package, not editable"


def test_dockerignore_keeps_secrets_and_data_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "data"} <= ignored


def test_compose_waits_out_the_drain() -> None:
    text = (ROOT / "deploy" / "compose.yaml").read_text()
    m = re.search(r"stop_grace_period:\s*(\d+)s", text)
    assert m and int(m.group(1)) > Settings(_env_file=None).shutdown_grace_s + 5


# --- systemd ----------------------------------------------------------------------------

UNIT = ROOT / "deploy" / "coterie.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_runs_coterie_as_a_dedicated_user_with_a_data_directory() -> None:
    service = _unit()["Service"]
    assert service["User"] not in ("root", "0") and service["User"] == service["Group"]
    assert service["ExecStart"].split()[-2:] == ["coterie", "run"] or service["ExecStart"].endswith(
        "/coterie run"
    )
    assert service["StateDirectory"] == "coterie"
    assert service["WorkingDirectory"] == "/var/lib/coterie"
    assert service["EnvironmentFile"].startswith("/etc/coterie/")
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_stop_timeout_is_above_the_grace_period() -> None:
    service = _unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    timeout = int(service["TimeoutStopSec"].rstrip("s"))
    assert timeout > Settings(_env_file=None).shutdown_grace_s + 10


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # Why a copy: verify checks that ExecStart's program exists; point it at one that
    # does (this interpreter's coterie), leaving every other line as shipped.
    coterie = Path(sys.executable).with_name("coterie")
    exe = coterie if coterie.exists() else Path(sys.executable)
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", UNIT.read_text(), flags=re.MULTILINE)
    unit = tmp_path / "coterie.service"
    unit.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    noise = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 0 and not noise, noise


# --- several processes --------------------------------------------------------------------

TEMPLATE = ROOT / "deploy" / "coterie@.service"


def test_the_template_unit_runs_one_process_per_instance_name(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    # Two EnvironmentFile lines (the shared one, then the instance's own, optional).
    assert re.findall(r"^EnvironmentFile=(\S+)$", text, re.MULTILINE) == [
        "/etc/coterie/coterie.env",
        "-/etc/coterie/coterie-%i.env",
    ]
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    service, single = parser["Service"], _unit()["Service"]
    for key in ("User", "Group", "ExecStart", "KillSignal", "TimeoutStopSec", "Restart"):
        assert service[key] == single[key], key
    assert "%i" in parser["Unit"]["Description"]
    if shutil.which("systemd-analyze") is not None:
        coterie = Path(sys.executable).with_name("coterie")
        exe = coterie if coterie.exists() else Path(sys.executable)
        unit = tmp_path / "coterie@1.service"
        unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", text, flags=re.MULTILINE))
        out = subprocess.run(
            ["systemd-analyze", "verify", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        noise = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        assert out.returncode == 0 and not noise, noise


def test_compose_runs_replicas_on_postgresql() -> None:
    text = (ROOT / "deploy" / "compose.yaml").read_text()
    assert re.search(r"^\s+image: postgres:\d+", text, re.MULTILINE)
    assert re.search(r"DATABASE_URL: postgresql://.+@postgres:5432/", text)
    m = re.search(r"replicas:\s*(\d+)", text)
    assert m and int(m.group(1)) > 1
    # Every replica's connections fit in PostgreSQL's default 100.
    pool = int(re.search(r'COTERIE_DB_POOL_SIZE: "(\d+)"', text).group(1))  # type: ignore[union-attr]
    overflow = int(re.search(r'COTERIE_DB_MAX_OVERFLOW: "(\d+)"', text).group(1))  # type: ignore[union-attr]
    assert int(m.group(1)) * (pool + overflow + 2) < 100
