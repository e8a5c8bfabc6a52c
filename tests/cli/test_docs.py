"""The documentation says what the code does: the README's configuration table and
``.env.example`` against ``Settings``, its commands against the CLI, every
``coterie ...`` line in a shell block of the README and docs/ against the parser,
and CI running the README's own test command."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from bot.cli import build_parser
from bot.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))

# Variables the README and .env.example may name that are not Settings fields: read
# by the provider registry from the environment, or a family of variables.
NOT_FIELDS = {
    "OPENROUTER_API_KEY",
    "OLLAMA_BASE_URL",
    "COTERIE_TIER_<NAME>",
    "COTERIE_TIER_<NAME>_FIRST_TOKEN_SECONDS",  # and _IDLE_, _TIMEOUT_: the tier config's
}
TEST_ONLY = {"COTERIE_TEST_POSTGRES_URL"}


def _config_rows() -> list[tuple[list[str], list[str]]]:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    table = section.split("| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.strip().splitlines()[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([A-Z][A-Z0-9_<>]+)`", cells[0])
        parts = [d.strip() for d in cells[1].split(", ")]
        # One default per variable, or one cell that says what unset means for all.
        defaults = parts if len(parts) == len(names) else [cells[1]]
        rows.append((names, defaults))
    return rows


def _default_text(field: str) -> str:
    info = Settings.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and field != "budget_default_usd":
        return str(int(value))
    return str(value)


def _field_of(var: str) -> str | None:
    for field in Settings.model_fields:
        if env_name(field) == var:
            return field
    return None


def test_the_configuration_table_lists_every_setting_with_its_default() -> None:
    documented: dict[str, str] = {}
    for names, defaults in _config_rows():
        assert len(defaults) in (1, len(names)), (names, defaults)
        for i, name in enumerate(names):
            documented[name] = defaults[i if len(defaults) == len(names) else 0]
    missing = [env_name(f) for f in Settings.model_fields if env_name(f) not in documented]
    assert not missing, f"add these to the README's configuration table: {missing}"
    unknown = [v for v in documented if _field_of(v) is None and v not in NOT_FIELDS]
    assert not unknown, f"the README documents variables Settings does not have: {unknown}"
    for var, shown in documented.items():
        field = _field_of(var)
        if field is None:
            continue
        expected = _default_text(field)
        shown_value = shown.strip("`")
        if expected == "—":
            # None: the table may say what unset means ("all built-ins", "from the token").
            assert not re.fullmatch(r"`?[-\d.]+`?", shown), (var, shown)
            continue
        assert shown_value == expected, f"{var}: the README says {shown}, Settings has {expected}"


def test_env_example_names_every_setting_and_only_real_ones() -> None:
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    missing = [env_name(f) for f in Settings.model_fields if env_name(f) not in named]
    assert not missing, f"add these to .env.example: {missing}"
    tiers = {v for v in named if v.startswith("COTERIE_TIER_")}
    unknown = [v for v in named - tiers if _field_of(v) is None and v not in NOT_FIELDS]
    assert not unknown, f".env.example names variables Settings does not have: {unknown}"
    # every line is a comment, blank, or a setting; every setting has a comment above it
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z][A-Z0-9_]+=", line):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_env_example_parses_as_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copied to .env unchanged, it is valid (empty keys count as unset)."""
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.discord_token is None or not settings.discord_token.get_secret_value()


# --- commands ---------------------------------------------------------------------------

LOCKED = ".venv/bin/pip install --no-deps -e ."
SETUP_RUN = (
    f"python3 -m venv .venv && .venv/bin/pip install --no-deps -r requirements.lock && {LOCKED}"
    " && .venv/bin/coterie run"
)
SETUP_TEST = (
    f"python3 -m venv .venv && .venv/bin/pip install --no-deps -r requirements-dev.lock && {LOCKED}"
    " && bash scripts/check"
)


def test_the_readme_set_up_commands_are_the_ones_ci_runs() -> None:
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert SETUP_RUN in setup and SETUP_TEST in setup
    ci = (ROOT / ".ci" / "run").read_text()
    assert SETUP_TEST in ci, ".ci/run must run the README's own test command"
    assert "install --upgrade pip" not in ci  # the README's pip, not a better-prepared one


def test_every_lock_install_skips_resolving_again() -> None:
    """A lock holds every dependency: pip must install it as it is (``--no-deps``).
    Left to resolve them again, pip 23.2 looked justext's ``lxml[html_clean]`` up
    anew (it does not normalize extras' names) and failed the hash check the day a
    newer lxml was published (pypa/pip#9644)."""
    places = [ROOT / "README.md", ROOT / "Dockerfile", ROOT / ".ci" / "run"]
    places += sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "deploy").iterdir())
    places += sorted((ROOT / "scripts").iterdir())
    installs = [
        (path.name, line)
        for path in places
        if path.is_file()
        for line in path.read_text().splitlines()
        if re.search(r"pip install .*-r \S*requirements", line)
    ]
    assert len(installs) >= 6  # README (3), .ci/run, Dockerfile, operations.md, ...
    bare = [(name, line) for name, line in installs if "--no-deps -r" not in line]
    assert not bare, f"install the lock with --no-deps: {bare}"


def _verbs(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_layout_lists_every_top_level_package() -> None:
    """A package the README's layout does not name is a part of coterie nobody told of."""
    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^([a-z_]+)/ ", layout, re.MULTILINE))
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= listed, f"add to the README's layout: {sorted(packages - listed)}"
    stale = {name for name in listed if not (ROOT / name).is_dir()}
    assert not stale, f"the README's layout names what does not exist: {sorted(stale)}"


def test_the_development_section_names_every_stage_of_the_check() -> None:
    check = (ROOT / "scripts" / "check").read_text()
    stages = re.findall(r'^echo "== ([a-z-]+)', check, re.MULTILINE)
    development = README.split("## Development", 1)[1].split("\n## ", 1)[0]
    words = {"lint-imports": "lint-imports", "versions": "versions", "pytest": "pytest"}
    missing = [s for s in stages if words.get(s, s) not in development]
    assert stages and not missing, f"the README's Development omits: {missing}"


def test_the_commands_table_lists_every_verb() -> None:
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\| `coterie ([a-z][a-z-]*)", table))
    verbs = _verbs(build_parser())
    assert listed <= verbs, f"the README lists verbs that do not exist: {listed - verbs}"
    assert verbs <= listed, f"add these verbs to the README's commands: {verbs - listed}"


_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "<", "&"}


def _is_coterie(token: str) -> bool:
    return token == "coterie" or token.endswith("/bin/coterie")


def _shell_lines(text: str) -> list[list[str]]:
    """The arguments of every ``coterie`` command in the shell blocks of ``text``
    (``[...]`` marks an optional part, left out)."""
    found: list[list[str]] = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line)
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            try:
                tokens = list(lexer)
            except ValueError:
                continue
            segment: list[str] = []
            for token in [*tokens, ";"]:
                if token not in _OPERATORS:
                    segment.append(token)
                    continue
                if segment and _is_coterie(segment[0]):
                    found.append(segment[1:])
                segment = []
    return found


def _parses(tokens: list[str]) -> str | None:
    parser = build_parser()

    def no_exit(message: str) -> Any:
        raise ValueError(message)

    for p in [parser, *_subparsers(parser)]:
        p.error = no_exit  # type: ignore[method-assign]
    try:
        parser.parse_args(tokens)
    except (ValueError, SystemExit) as exc:
        return str(exc)
    return None


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.extend([sub, *_subparsers(sub)])
    return out


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_documented_command_line_parses(doc: Path) -> None:
    bad = {}
    for tokens in _shell_lines(doc.read_text()):
        if not tokens or tokens[0] in ("--help", "-h"):
            continue
        error = _parses(tokens)
        if error is not None:
            bad[" ".join(tokens)] = error
    assert not bad, f"{doc.name} shows commands coterie does not take: {bad}"
