"""Approve/Deny across processes, through the fake Discord (which routes an interaction
to the session of its guild's shard, as Discord does): two real clients on one
database, one per shard. The run waits in the client that does not serve the guild (as
the scheduler's leader posts in a guild another process serves, over REST); the press
goes to the other, which records it; the waiting run goes on with the decision. Bob's
press is refused privately; a second press is told what was decided and by whom; a
question nobody answered in time says so, and a press after that is refused and takes
the buttons off. On SQLite the second client's notice is handed over in the test (one
process has nobody to tell); on PostgreSQL it goes by ``NOTIFY`` as between two
``coterie run``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from adapters.discord.approval import ask_with_buttons
from adapters.services.approval import ENDED, RESTARTING, ApprovalService
from adapters.services.instances import FixedShards
from adapters.storage.approvals import SqlApprovals
from adapters.storage.db import Database
from adapters.storage.notify import PgNotifier
from executor.agent import Caller
from executor.ports import ApprovalDecision, ApprovalRequest
from executor.testing import FakeClock
from tests.fakediscord import FakeDiscord, FakeGuild
from tests.fakediscord.plugin import FakeApp, coterie_bot, run_bot
from tests.storage.dbs import db, pg_db, pg_url, sqlite_db, sqlite_template

__all__ = ["db", "pg_db", "pg_url", "sqlite_db", "sqlite_template"]  # the fixtures used here

EPHEMERAL = 64
UPDATE_MESSAGE = 7


class _Process(FakeApp):
    """What one ``coterie run`` brings to its client here: its questions."""

    def __init__(self, approvals: ApprovalService) -> None:
        super().__init__()
        self.approvals = approvals


@pytest.fixture
async def world(
    fake_discord: FakeDiscord, db: Database
) -> AsyncIterator[tuple[FakeDiscord, FakeGuild, Any, Any]]:
    """Client ``far`` serves shard 0, client ``near`` shard 1, where the guild is."""
    fake = fake_discord
    fake.recommended_shards = 2
    guild = fake.add_guild("elsewhere", shard=1, shard_count=2)
    far_q = ApprovalService(SqlApprovals(db.sessions))
    near_q = ApprovalService(SqlApprovals(db.sessions))
    async with AsyncExitStack() as stack:
        if db.is_sqlite:

            async def hand_over(key: str) -> None:
                far_q.changed(key)

            near_q.publish = hand_over
        else:
            notifiers = [PgNotifier(db.url, sender=s) for s in ("far", "near")]
            for n in notifiers:
                await n.start()
                stack.push_async_callback(n.close)
            notifiers[0].subscribe("approvals", far_q.changed)
            near_notifier = notifiers[1]

            async def publish(key: str) -> None:
                await near_notifier.publish("approvals", key)

            near_q.publish = publish
        # Only a notice can wake the waiting run in time: no periodic read here.
        far_q.poll_s = near_q.poll_s = 3600
        bots = []
        for shard, questions in ((0, far_q), (1, near_q)):
            bot = coterie_bot(fake, app=_Process(questions), shards=FixedShards(2, [shard]))
            bots.append(await stack.enter_async_context(run_bot(fake, bot)))
        await fake.wait_for_shards({0, 1})
        yield fake, guild, bots[0], bots[1]


def _buttons(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The buttons of a message body (a post, an edit, an interaction's ``data``)."""
    return {b["label"]: b for row in body["components"] for b in row["components"]}


def _asking(far: Any, guild: FakeGuild, fake: FakeDiscord, wait_s: float) -> Callable[..., Any]:
    alice = int(fake.user("alice")["id"])
    request = ApprovalRequest(
        run_id="run-far",
        caller=Caller(user_id=str(alice), display_name="alice", guild_id=str(guild.id)),
        tool="delete_everything",
        call_id="call-1",
        arguments={"target": "logs"},
    )

    async def ask() -> ApprovalDecision:
        # The far client reads the channel over REST: its guild is not in its cache.
        channel = await far.fetch_channel(guild.channel_id("general"))
        return await ask_with_buttons(
            channel, request, requester_id=alice, approvals=far.approvals, wait_s=wait_s
        )

    return ask


async def test_the_press_reaches_the_other_process_and_the_waiting_run_goes_on(
    world: tuple[FakeDiscord, FakeGuild, Any, Any],
) -> None:
    fake, guild, far, near = world
    assert far.get_guild(guild.id) is None and near.get_guild(guild.id) is not None
    general = guild.channel_id("general")
    since = len(fake.calls)
    asked = asyncio.ensure_future(_asking(far, guild, fake, wait_s=60)())
    ask = await fake.wait_for_call(
        "POST",
        rf"/channels/{general}/messages",
        predicate=lambda c: "components" in (c.json or {}),
        since=since,
    )
    alice = fake.user("alice")["id"]
    assert ask.json["content"].startswith(f"<@{alice}> Allow the tool **delete_everything**")
    buttons = _buttons(ask.json)
    assert set(buttons) == {"Approve", "Deny"}
    msg_id = int(ask.response["id"])

    # Bob is not the one who asked: told privately, nothing decided.
    press = await fake.dispatch_component(buttons["Approve"]["custom_id"], msg_id, user="bob")
    told = await fake.wait_for_interaction_response(press)
    assert told.json["type"] == 4 and told.json["data"]["flags"] & EPHEMERAL
    assert told.json["data"]["content"].startswith("Not yours")
    assert not asked.done()

    # Alice's press lands in the near client; the far one's run goes on, approved.
    press = await fake.dispatch_component(buttons["Approve"]["custom_id"], msg_id, user="alice")
    marked = await fake.wait_for_interaction_response(press)
    assert marked.json["type"] == UPDATE_MESSAGE
    assert marked.json["data"]["content"].endswith("\n-# Approved.")
    assert all(b.get("disabled") for b in _buttons(marked.json["data"]).values())
    assert await asyncio.wait_for(asked, 10) == ApprovalDecision(approved=True)

    # A second press (a stale client still shows the buttons): decided already, by alice.
    press = await fake.dispatch_component(buttons["Deny"]["custom_id"], msg_id, user="alice")
    told = await fake.wait_for_interaction_response(press)
    assert told.json["type"] == 4 and told.json["data"]["flags"] & EPHEMERAL
    assert told.json["data"]["content"] == "Already approved by Alice."
    assert fake.unknown_calls == []


async def test_a_deny_reaches_the_run_with_who_denied_it(
    world: tuple[FakeDiscord, FakeGuild, Any, Any],
) -> None:
    fake, guild, far, _ = world
    since = len(fake.calls)
    asked = asyncio.ensure_future(_asking(far, guild, fake, wait_s=60)())
    ask = await fake.wait_for_call(
        "POST", r"/channels/{c}/messages", lambda c: "components" in (c.json or {}), since=since
    )
    deny = _buttons(ask.json)["Deny"]["custom_id"]
    press = await fake.dispatch_component(deny, int(ask.response["id"]), user="alice")
    marked = await fake.wait_for_interaction_response(press)
    assert marked.json["data"]["content"].endswith("\n-# Denied.")
    assert await asyncio.wait_for(asked, 10) == ApprovalDecision(
        approved=False, reason="Alice denied it"
    )


async def test_no_answer_in_time_is_denied_and_a_late_press_is_refused(
    world: tuple[FakeDiscord, FakeGuild, Any, Any],
) -> None:
    fake, guild, far, _ = world
    since = len(fake.calls)
    decision = await _asking(far, guild, fake, wait_s=0.2)()
    assert decision == ApprovalDecision(approved=False, reason="no answer in time")
    ask = await fake.wait_for_call(
        "POST", r"/channels/{c}/messages", lambda c: "components" in (c.json or {}), since=since
    )
    msg_id = int(ask.response["id"])
    edited = await fake.wait_for_call("PATCH", rf"/channels/{{c}}/messages/{msg_id}", since=since)
    assert edited.json["content"].endswith("\n-# No answer in time: denied.")
    assert all(b.get("disabled") for b in _buttons(edited.json).values())

    press = await fake.dispatch_component(
        _buttons(ask.json)["Approve"]["custom_id"], msg_id, user="alice"
    )
    marked = await fake.wait_for_interaction_response(press)
    assert marked.json["type"] == UPDATE_MESSAGE
    assert all(b.get("disabled") for b in _buttons(marked.json["data"]).values())
    told = await fake.wait_for_call(
        "POST", rf"/webhooks/{fake.application_id}/{press.token}", since=since
    )
    assert told.json["content"].startswith("Too late") and told.json["flags"] & EPHEMERAL


@pytest.mark.parametrize("restarting", [False, True], ids=["cancelled", "drained"])
async def test_a_run_that_stops_waiting_greys_the_buttons_and_a_stale_press_decides_nothing(
    world: tuple[FakeDiscord, FakeGuild, Any, Any], restarting: bool
) -> None:
    """The run is cancelled while it waits (its time limit, its member; or a restart's
    drain cut it): the message's buttons are greyed and it says why; a press from a
    client that still showed them is answered privately and records nothing."""
    fake, guild, far, near = world
    clock = far.approvals.clock = FakeClock()  # to know when the run waits
    since = len(fake.calls)
    asked = asyncio.ensure_future(_asking(far, guild, fake, wait_s=60)())
    await clock.wait_for_sleepers(1)
    ask = await fake.wait_for_call(
        "POST", r"/channels/{c}/messages", lambda c: "components" in (c.json or {}), since=since
    )
    msg_id = int(ask.response["id"])
    if restarting:
        far.approvals.restarting()  # what the drain does before it cuts the runs
    asked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asked
    edited = await fake.wait_for_call("PATCH", rf"/channels/{{c}}/messages/{msg_id}", since=since)
    assert edited.json["content"].endswith(f"\n-# {RESTARTING if restarting else ENDED}")
    assert all(b.get("disabled") for b in _buttons(edited.json).values())

    press = await fake.dispatch_component(
        _buttons(ask.json)["Approve"]["custom_id"], msg_id, user="alice"
    )
    marked = await fake.wait_for_interaction_response(press)
    assert marked.json["type"] == UPDATE_MESSAGE
    assert all(b.get("disabled") for b in _buttons(marked.json["data"]).values())
    told = await fake.wait_for_call(
        "POST", rf"/webhooks/{fake.application_id}/{press.token}", since=since
    )
    assert told.json["flags"] & EPHEMERAL
    assert told.json["content"] == "The run stopped waiting for this answer."
    approval_id = _buttons(ask.json)["Approve"]["custom_id"].rsplit(":", 1)[1]
    row = await near.approvals.store.get(approval_id)
    assert row is not None and row.decision == "cancelled" and row.decided_by is None
    assert fake.unknown_calls == []
