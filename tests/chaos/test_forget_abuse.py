"""/forgetme is no way around a budget (issue 20). The probe: an admin set a member to
$0.50; four $0.125 runs passed and the fifth was refused; after /forgetme the spend read
$0.00, the limit was back to the default, and twelve more runs passed (the ledger said
$1.50, the audit $2.00).

Here, through the fake Discord and the real app: the admin sets Alice to $0.50 with
/budget set, Alice asks until she is refused, confirms /forgetme, and asks again: still
refused, her spend and limit as they were, and the ledger and the audit agree on what
was spent before and after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, build_app
from bot.settings import Settings
from commands.privacy import BUDGET_KEPT
from executor.agent import RunStatus
from executor.events import RunFinished
from executor.messages import Usage
from executor.testing import Reply, RunEnds, ScriptedModel, ScriptedTiers
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot
from tests.services.test_deletion import ledger_and_audit_totals

pytestmark = pytest.mark.chaos

RUN_COST = 125_000  # $0.125
LIMIT = "0.50"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, ScriptedModel, RunEnds]]:
    model = ScriptedModel()
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=5.0,
    )
    built = await build_app(settings, resolver=ScriptedTiers(model))
    finished = RunEnds()
    built.executor.observers.append(finished)
    try:
        yield built, model, finished
    finally:
        await built.close()


@pytest.fixture
def bot_factory(app: tuple[App, ScriptedModel, RunEnds]) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(
            fake,
            app=app[0],
            extensions=("commands.chat", "commands.budget", "commands.privacy"),
        )

    return make


async def _ask(fake: FakeDiscord, model: ScriptedModel, finished: RunEnds) -> RunFinished:
    """Alice mentions the bot once; the run's end."""
    model.push(
        Reply(text="ok", usage=Usage(input_tokens=50, output_tokens=5, cost_micros=RUN_COST))
    )
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> once more", mentions=["bot"])
    return await finished.next()


async def _forgetme(fake: FakeDiscord) -> str:
    inter = await fake.dispatch_slash("forgetme", {}, user="alice")
    ask = await fake.wait_for_interaction_response(inter)
    message = ask.response["resource"]["message"]
    assert BUDGET_KEPT in message["content"]  # said before she confirms
    (yes,) = [
        b
        for row in message["components"]
        for b in row["components"]
        if b["label"] == "Delete my data"
    ]
    press = await fake.dispatch_component(yes["custom_id"], int(message["id"]), user="alice")
    await fake.wait_for_interaction_response(press)
    done = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{inter.token}")
    content: str = done.json["content"]
    return content


async def test_forgetme_does_not_reset_a_budget_an_admin_cut(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel, RunEnds]
) -> None:
    fake = fake_discord
    the_app, model, finished = app
    alice = fake.user("alice")
    alice_id = str(alice["id"])
    member = {k: v for k, v in fake.guild.members[int(alice_id)].items() if k != "user"}
    inter = await fake.dispatch_slash(
        "budget",
        [
            {"name": "member", "type": 6, "value": alice_id},
            {"name": "limit", "type": 3, "value": LIMIT},
        ],
        subcommand="set",
        user="admin",
        resolved={"users": {alice_id: alice}, "members": {alice_id: member}},
    )
    await fake.wait_for_interaction_response(inter)
    assert (await the_app.budget.status(alice_id)).limit_micros == 500_000

    statuses: list[RunStatus] = []
    while not statuses or statuses[-1] is RunStatus.OK:
        statuses.append((await _ask(fake, model, finished)).result.status)
        assert len(statuses) <= 10
    assert statuses == [RunStatus.OK] * 4 + [RunStatus.BUDGET_DENIED]
    await the_app.audit.flush()
    before = await ledger_and_audit_totals(the_app)
    spent = await the_app.budget.status(alice_id)

    said = await _forgetme(fake)
    assert said.startswith("Done: coterie forgot you") and BUDGET_KEPT in said

    after_forget = await the_app.budget.status(alice_id)
    assert after_forget == spent  # $0.50 spent of her $0.50: not reset
    again = [(await _ask(fake, model, finished)).result.status for _ in range(3)]
    assert again == [RunStatus.BUDGET_DENIED] * 3
    await the_app.audit.flush()
    after = await ledger_and_audit_totals(the_app)
    assert before == after == (4 * RUN_COST, 4 * RUN_COST)
    print(
        f"\n/forgetme abuse: limit ${LIMIT}, {statuses.count(RunStatus.OK)} runs passed, then "
        f"refused; ledger ${before[0] / 1e6:.2f} vs audit ${before[1] / 1e6:.2f} before "
        f"/forgetme, ${after[0] / 1e6:.2f} vs ${after[1] / 1e6:.2f} after; spend "
        f"${after_forget.spent_micros / 1e6:.2f} of ${after_forget.limit_micros / 1e6:.2f} "
        f"after it; {again.count(RunStatus.BUDGET_DENIED)} of {len(again)} runs after it refused"
    )
