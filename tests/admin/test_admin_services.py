"""Admin review below the Discord edge: guild settings (typed, stored, cached), whose
budget applies where, budget warnings (once per crossing, across a restart, re-armed
when spend rolls out of the window on a fake clock), the chat flow's allowlist, DMs,
tier and critic limits, the admin service's checks, money and times for people.

The stores run on a migrated SQLite file and on PostgreSQL (``db``, from
``tests.storage.dbs``: migration 0003 included)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.services.admin import AdminService
from adapters.services.budget_alerts import BudgetAlerts, InMemoryAlertStore
from adapters.services.budgets import GuildBudgetLimits, member_view, typical_cost
from adapters.services.chat import ChatService, IncomingMessage
from adapters.services.errors import InvalidSetting
from adapters.services.ports import GuildConfig, InMemoryGuildSettings
from adapters.services.when import parse_when
from adapters.storage.admin import SqlAdminLog, SqlAlertStore
from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from adapters.storage.guild_settings import SqlGuildSettings
from bot.app import build_app
from bot.settings import Settings
from executor.agent import Bounds, Caller, Invocation, RunnableAgent
from executor.budget import format_usd
from executor.errors import BudgetExceeded
from executor.messages import Message, Usage
from executor.run import Executor
from executor.testing import FakeClock, Reply, ScriptedModel, ScriptedTiers
from personas.model import Persona

GUILD = "100"
MEMBER = Caller(user_id="42", display_name="m", guild_id=GUILD, roles=("r-helper",))


# --- money and times -------------------------------------------------------------------


def test_format_usd_is_the_one_money_formatter() -> None:
    assert format_usd(4_200) == "$0.0042"
    assert format_usd(5_000_000, 2) == "$5.00"
    assert format_usd(-1_500_000, 2) == "-$1.50"
    assert format_usd(0) == "$0.0000"


def test_format_usd_shows_the_precision_an_amount_has() -> None:
    # Issue 20: `/budget grant 0.001` answered "Granted $0.00" and granted $0.001.
    assert format_usd(1_000, 2) == "$0.001"
    assert format_usd(1_500_000, 2) == "$1.50"
    assert format_usd(4_237) == "$0.004237"
    assert format_usd(1, 2) == "$0.000001"
    assert format_usd(1_234_567_890, 2) == "$1,234.56789"
    assert format_usd(-15_000, 2) == "-$0.015"


def test_parse_when() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_when("2h", now=now) == now - timedelta(hours=2)
    assert parse_when("7D", now=now) == now - timedelta(days=7)
    assert parse_when("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC)
    with pytest.raises(InvalidSetting, match="not a time"):
        parse_when("yesterday-ish")


# --- guild settings ----------------------------------------------------------------------


def test_where_coterie_answers_and_which_role_budget_wins() -> None:
    everywhere = GuildConfig(guild_id=GUILD)
    assert everywhere.answers_in("1") and everywhere.answers_in(None)
    listed = GuildConfig(guild_id=GUILD, answer_channels=("1",), answer_categories=("9",))
    assert listed.answers_in("1") and listed.answers_in("2", "9")
    assert not listed.answers_in("2") and not listed.answers_in("2", "8")
    roles = GuildConfig(guild_id=GUILD, role_budgets=(("a", 2_000_000), ("b", 9_000_000)))
    assert roles.role_budget(["a", "b", "c"]) == 9_000_000  # the most generous
    assert roles.role_budget(["c"]) is None


async def test_every_setting_is_stored_typed_and_a_change_applies_at_once(db: Database) -> None:
    settings = SqlGuildSettings(db.sessions, ttl_s=3600)
    assert await settings.guild(GUILD) == GuildConfig(guild_id=GUILD)  # a guild that never set
    assert await settings.guilds_without_dms() == frozenset()
    changed = await settings.update_guild(
        GUILD,
        answer_channels=("1", "2"),
        answer_categories=("9",),
        allow_dms=False,
        default_tier="fast",
        timezone="Europe/Paris",
        budget_default_micros=2_000_000,
        role_budgets=(("r-helper", 7_000_000),),
        critic_soft_runtime_s=30.0,
        critic_soft_steps=4,
        critic_hard_runtime_s=90.0,
        cost_footer=True,
    )
    # Read back through a fresh store (no cache): the same typed config.
    fresh = await SqlGuildSettings(db.sessions).guild(GUILD)
    assert fresh == changed
    assert fresh.answer_channels == ("1", "2") and fresh.role_budgets == (("r-helper", 7_000_000),)
    # The caching store saw its own change at once (a long TTL did not hide it).
    assert (await settings.guild(GUILD)).cost_footer is True
    assert await settings.guilds_without_dms() == frozenset({GUILD})
    await settings.update_guild(GUILD, allow_dms=None)
    assert await settings.guilds_without_dms() == frozenset()
    with pytest.raises(ValueError, match="unknown guild setting"):
        await settings.update_guild(GUILD, colour="red")


# --- budgets: whose limit applies where ------------------------------------------------


async def test_member_override_beats_role_beats_guild_beats_deployment(db: Database) -> None:
    clock = FakeClock()
    settings = SqlGuildSettings(db.sessions)
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000, clock=clock)
    ledger.limits = GuildBudgetLimits(settings, 1_000_000)
    elsewhere = Caller(user_id="42", guild_id="other")
    assert (await ledger.status("42", context=MEMBER)).limit_micros == 1_000_000
    await settings.update_guild(GUILD, budget_default_micros=3_000_000)
    assert (await ledger.status("42", context=MEMBER)).limit_micros == 3_000_000
    assert (await ledger.status("42", context=elsewhere)).limit_micros == 1_000_000
    await settings.update_guild(GUILD, role_budgets=(("r-helper", 5_000_000),))
    assert (await ledger.status("42", context=MEMBER)).limit_micros == 5_000_000
    await ledger.set_limit("42", 500_000)
    assert (await ledger.status("42", context=MEMBER)).limit_micros == 500_000
    # The gate refuses by the limit of the place the member asks in.
    await ledger.set_limit("42", None)
    await ledger.reserve(MEMBER, "r1", 4_000_000)  # 5 dollars here: fits
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(elsewhere, "r2", 100_000)  # 1 dollar there: 4 already reserved


async def test_member_view_says_when_a_typical_run_fits_again(db: Database) -> None:
    class Costs:
        async def recent_costs(
            self, *, user_id: str | None = None, guild_id: str | None = None, limit: int = 20
        ) -> list[int]:
            return [200_000, 300_000, 0, 400_000] if user_id else []

    clock = FakeClock()
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000, clock=clock)
    r = await ledger.reserve(MEMBER, "a", 0)
    await ledger.settle(r, 600_000)
    await clock.advance(3600)
    r = await ledger.reserve(MEMBER, "b", 0)
    await ledger.settle(r, 300_000)
    view = await member_view(MEMBER, ledger, Costs())
    assert view.typical_run_micros == 300_000 == typical_cost([200_000, 300_000, 0, 400_000])
    assert not view.affordable_now  # 0.10 left, a typical run is 0.30
    # The first charge (0.60) rolls out 7 days after it was made.
    assert view.affordable_at == clock.now() - timedelta(hours=1) + timedelta(days=7)


# --- budget warnings -----------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_warning(self, user_id: str, text: str) -> None:
        self.sent.append((user_id, text))


async def _spend(ledger: SqlBudgetLedger, caller: Caller, micros: int) -> None:
    reservation = await ledger.reserve(caller, f"run-{micros}", 0)
    await ledger.settle(reservation, micros)


async def test_warnings_once_per_crossing_rearmed_when_spend_rolls_out(db: Database) -> None:
    clock = FakeClock()
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000, clock=clock)
    alerts = BudgetAlerts(ledger, SqlAlertStore(db.sessions), thresholds=(50, 80), clock=clock)
    ledger.after_settle.append(alerts.check)
    inbox = Inbox()
    alerts.attach(inbox)
    await _spend(ledger, MEMBER, 400_000)
    assert inbox.sent == []
    await _spend(ledger, MEMBER, 150_000)  # 55 %
    assert [t.split(" of your")[0] for _, t in inbox.sent] == ["Heads up: you have used 50 %"]
    await _spend(ledger, MEMBER, 100_000)  # 65 %: nothing new
    assert len(inbox.sent) == 1
    await _spend(ledger, MEMBER, 200_000)  # 85 %: the 80 % one
    assert len(inbox.sent) == 2 and "used 80 %" in inbox.sent[1][1]
    # A week later everything rolled out: the next crossing warns again.
    await clock.advance(7 * 86400 + 1)
    await _spend(ledger, MEMBER, 900_000)  # 90 % at once: one DM, naming 80 %
    assert len(inbox.sent) == 3 and "used 80 %" in inbox.sent[2][1]
    assert "/budget grant" in inbox.sent[2][1] and "$0.90 of $1.00" in inbox.sent[2][1]


async def test_the_settle_reads_what_the_warnings_need_in_its_own_transaction(
    db: Database,
) -> None:
    """Issue 19: after a settle the warnings read neither the budget nor the claims
    (the settle's transaction did); they only write a claim when one is crossed."""
    clock = FakeClock()
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000, clock=clock)
    store = SqlAlertStore(db.sessions)
    reads: list[str] = []

    class Counting(SqlBudgetLedger):
        async def status(self, user_id: str, *, context: Caller | None = None):  # type: ignore[no-untyped-def]
            reads.append("status")
            return await super().status(user_id, context=context)

        async def spent_at(self, user_id: str, at: datetime) -> int:
            reads.append("spent_at")
            return await super().spent_at(user_id, at)

    class CountingStore(SqlAlertStore):
        async def claimed(self, user_id: str) -> dict[int, datetime]:
            reads.append("claimed")
            return await super().claimed(user_id)

    counting = Counting(db.sessions, default_limit_micros=1_000_000, clock=clock)
    alerts = BudgetAlerts(counting, CountingStore(db.sessions), thresholds=(50,), clock=clock)
    ledger.after_settle.append(alerts.check)
    inbox = Inbox()
    alerts.attach(inbox)
    await _spend(ledger, MEMBER, 100_000)  # 10 %: nothing
    await _spend(ledger, MEMBER, 500_000)  # 60 %: warned
    await _spend(ledger, MEMBER, 10_000)  # 61 %: nothing new
    assert len(inbox.sent) == 1 and "used 50 %" in inbox.sent[0][1]
    assert await store.claimed(MEMBER.user_id) == {50: clock.now()}
    await clock.advance(7 * 86400 + 1)  # rolled out: back under, and warned again
    await _spend(ledger, MEMBER, 700_000)
    assert len(inbox.sent) == 2
    assert reads == []


async def test_the_50_percent_warning_is_sent_once_across_a_restart(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=1.0,
    )
    member = Caller(user_id="42", display_name="m")
    sent: list[str] = []
    for cost in (550_000, 50_000):  # 55 %, then 60 % after a restart
        app = await build_app(settings, resolver=ScriptedTiers(ScriptedModel()))
        inbox = Inbox()
        app.budget_alerts.attach(inbox)
        try:
            model = ScriptedModel()
            model.push(Reply(text="ok", usage=Usage(output_tokens=1, cost_micros=cost)))
            result = await app.executor.run(
                RunnableAgent(model=model),
                Invocation(messages=[Message.user("hi")], caller=member),
            )
            assert result.ok
        finally:
            await app.close()
        sent += [text for _, text in inbox.sent]
    assert len(sent) == 1 and "used 50 %" in sent[0]


async def test_a_warning_that_cannot_be_sent_does_not_fail_the_run() -> None:
    class Closed:
        async def send_warning(self, user_id: str, text: str) -> None:
            raise RuntimeError("DMs closed")

    class Ledger:
        async def status(self, user_id: str, *, context: Caller | None = None):  # type: ignore[no-untyped-def]
            from executor.budget import BudgetStatus

            return BudgetStatus(user_id, 1_000_000, 1_000_000, False, 0, 900_000, 0)

        async def affordable_at(self, *a: object, **k: object) -> None:
            return None

        async def spent_at(self, user_id: str, at: datetime) -> int:
            return 900_000

    store = InMemoryAlertStore()
    alerts = BudgetAlerts(Ledger(), store)
    alerts.attach(Closed())
    assert await alerts.check(MEMBER) == 80  # claimed (no late DM after it), not raised
    assert await alerts.check(MEMBER) is None
    with pytest.raises(ValueError, match="1-100"):
        BudgetAlerts(Ledger(), store, thresholds=(0,))


# --- the chat flow -----------------------------------------------------------------------


class Surface:
    def __init__(self, shares: bool) -> None:
        self.shares = shares
        self.excluded: Collection[str] = ()

    async def shares_guild(self, *, excluding: Collection[str]) -> bool:
        self.excluded = excluding
        return self.shares


def _chat(settings: InMemoryGuildSettings, *, allow_dms: bool = True) -> ChatService:
    class Personas:
        async def find(self, guild_id: str | None, name: str) -> Persona | None:
            return Persona(name=name, system_prompt="x")

    return ChatService(
        executor=Executor(),
        personas=Personas(),
        guild_settings=settings,
        allow_dms=allow_dms,
        default_tier="standard",
    )


async def test_should_answer_follows_the_allowlist_and_the_dm_rules() -> None:
    settings = InMemoryGuildSettings()
    chat = _chat(settings)
    mention = IncomingMessage(
        caller=MEMBER, guild_id=GUILD, channel_id="1", category_id="9", mentions_bot=True
    )
    assert await chat.should_answer(mention)
    await settings.update_guild(GUILD, answer_channels=("2",))
    assert not await chat.should_answer(mention)
    await settings.update_guild(GUILD, answer_categories=("9",))
    assert await chat.should_answer(mention)  # its category is listed

    dm = IncomingMessage(caller=MEMBER, guild_id=None, channel_id="dm")
    assert await chat.should_answer(dm)  # no guild turned DMs off
    await settings.update_guild(GUILD, allow_dms=False)
    assert not await chat.should_answer(dm, Surface(shares=False))
    surface = Surface(shares=True)
    assert await chat.should_answer(dm, surface)  # a member of another guild that allows them
    assert set(surface.excluded) == {GUILD}
    assert not await chat.should_answer(dm)  # no way to tell: not answered
    assert not await _chat(InMemoryGuildSettings(), allow_dms=False).should_answer(dm)


async def test_the_guild_tier_and_critic_limits_reach_the_agent() -> None:
    settings = InMemoryGuildSettings()
    chat = _chat(settings)
    config = await settings.update_guild(
        GUILD,
        default_tier="fast",
        critic_soft_runtime_s=20.0,
        critic_soft_steps=3,
        critic_hard_runtime_s=60.0,
    )
    agent = chat.for_guild(RunnableAgent(tier="standard"), config)
    assert agent.tier == "fast"
    assert agent.bounds.soft_runtime_s == 20.0 and agent.bounds.soft_steps == 3
    assert agent.bounds.max_runtime_s == 60.0
    own = RunnableAgent(tier="smart", bounds=Bounds(soft_steps=10, max_runtime_s=30.0))
    kept = chat.for_guild(own, config)
    assert kept.tier == "smart" and kept.bounds.soft_steps == 10  # its own choices stand
    assert kept.bounds.max_runtime_s == 30.0 and kept.bounds.soft_runtime_s == 20.0
    assert chat.for_guild(own, None) is own


# --- the admin service -----------------------------------------------------------------


async def test_admin_checks_values_and_records_who_changed_what(db: Database) -> None:
    settings = SqlGuildSettings(db.sessions)
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000)
    log = SqlAdminLog(db.sessions)

    async def exists(guild_id: str, name: str) -> bool:
        return name == "researcher"

    admin = AdminService(
        guild_settings=settings,
        budget=ledger,
        log=log,
        tiers=("fast", "standard"),
        persona_exists=exists,
    )
    actor = Caller(user_id="9", display_name="Ada")
    config = await admin.configure(actor, GUILD, timezone="europe/paris", default_tier="FAST")
    assert config.timezone == "Europe/Paris"
    assert config.default_tier == "fast"
    for bad in (
        {"timezone": "Nowhere/Land"},
        {"default_tier": "huge"},
        {"default_persona": "ghost"},
        {"budget_default_micros": -1},
        {"critic_soft_steps": 0},
        {"critic_soft_runtime_s": 60.0, "critic_hard_runtime_s": 30.0},
    ):
        with pytest.raises(InvalidSetting):
            await admin.configure(actor, GUILD, **bad)
    await admin.set_role_budget(actor, GUILD, "r1", 2_000_000)
    await admin.answer_in(actor, GUILD, add=True, channel_id="5")
    await admin.answer_in(actor, GUILD, add=False, channel_id="5")
    await admin.set_limit(actor, "42", 3_000_000, guild_id=GUILD)
    await admin.grant(actor, "42", 1_000_000, reason="  thanks   a lot ", guild_id=GUILD)
    with pytest.raises(InvalidSetting):
        await admin.grant(actor, "42", 0, reason="x", guild_id=GUILD)
    entries = (await log.list(guild_id=GUILD, limit=50)).entries
    assert [e.action for e in entries] == [
        "budget.grant",
        "budget.set",
        "config.set",
        "config.set",
        "config.set",
        "config.set",
    ]
    assert all(e.actor_id == "9" and e.actor_name == "Ada" for e in entries)
    assert entries[0].detail == {"amount_micros": 1_000_000, "reason": "thanks a lot"}
    assert entries[0].target_id == "42"
    assert entries[2].detail["changes"]["answer_channels"] == {"from": ["5"], "to": []}
    status = await ledger.status("42")
    assert status.limit_micros == 4_000_000 and status.granted_micros == 1_000_000
    # Paging by cursor, newest first.
    first = await log.list(guild_id=GUILD, limit=4)
    assert first.next_cursor is not None
    rest = await log.list(guild_id=GUILD, limit=4, cursor=first.next_cursor)
    assert [e.id for e in first.entries + rest.entries] == [e.id for e in entries]
