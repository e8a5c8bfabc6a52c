from __future__ import annotations

import subprocess
import sys


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
