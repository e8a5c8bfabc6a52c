from __future__ import annotations

import subprocess
import sys

import pytest


def test_help_lists_every_verb_and_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from bot.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('anthropic', 'openai', 'discord', 'sqlalchemy', 'sqlmodel', 'trafilatura')\n"
        "print('HEAVY=' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for verb in ("ask", "chat", "run", "invite", "sync", "db", "audit"):
        assert verb in out.stdout
    assert "HEAVY=\n" in out.stdout


@pytest.mark.parametrize(
    ("argv", "deferred", "quick"),
    [
        (["ask", "hi"], True, True),
        (["chat"], True, True),
        (["run"], True, False),
        (["budget", "show", "42"], False, False),
    ],
)
def test_the_collector_is_off_only_through_a_heavy_verbs_start(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], deferred: bool, quick: bool
) -> None:
    """The program starts with the garbage collector off (bot.cli.entry); a light verb
    turns it back on before it runs, a heavy one once its app is built and its SDKs
    imported (bot.cli._common.started), freezing what its start made; only ask and chat
    leave at once."""
    import gc

    import bot.cli
    import bot.cli._common as common

    seen: list[bool] = []

    def run_handler(handler: object, args: object) -> int:
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setattr(common, "run_handler", run_handler)
    gc.disable()
    try:
        assert bot.cli._main(argv) == (0, quick)
        assert seen == [not deferred]
        common.started()
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
