"""The bot process's life: one instance per database, signals, a drain, a close.

``coterie run`` (:func:`serve`), in order::

    take the database's lock          SQLite: a second `coterie run` refuses, naming the
                                      holder; PostgreSQL: shared by this version's processes
    build the app                     upgrade the schema; recover dead processes' runs;
                                      register this instance (heartbeat, owner of its runs)
    check a model can answer          one line naming the key to set, before connecting
    connect to Discord                its shards: all, pinned, or its share (PostgreSQL)
                                       ... until SIGTERM or SIGINT, then the drain:
    stop intake                       the scheduler stops; with another instance alive,
                                      its shards are handed over (disconnected, released);
                                      else new requests read "restarting"
    let running runs finish           up to COTERIE_SHUTDOWN_GRACE_S (a second signal: now)
    cancel the rest                   "Stopped: coterie is restarting."; audit and budget closed;
                                      each member's chat gets Resume / Discard (its checkpoint
                                      kept; the press is taken by whichever process runs next)
    close Discord, then the app       audit flush, deregister, providers, database
    release the lock                  exit 0, no traceback

A process whose heartbeat finds it was declared dead (it stalled past its lease:
another process has settled its runs and taken its shards) stops at once, as on a
second signal.

discord.py's ``Client.run`` handles only KeyboardInterrupt, so the handlers are
the event loop's own (``loop.add_signal_handler``). ``coterie ask`` and ``coterie
chat`` use :func:`cancel_on_sigterm`: SIGTERM cancels their run the way Ctrl-C
does, and the executor closes it (status ``cancelled``, budget settled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from executor.ports import Clock, RealClock

if TYPE_CHECKING:
    from adapters.services.runner import DrainReport
    from adapters.storage.lock import InstanceLock
    from bot.app import App
    from bot.client import CoterieBot
    from bot.settings import Settings

__all__ = [
    "SIGNALS",
    "Shutdown",
    "Stopped",
    "cancel_on_sigterm",
    "drain",
    "serve",
]

log = logging.getLogger("coterie.lifecycle")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")

# How often the PostgreSQL lock's connection is checked (a server restart drops it).
LOCK_CHECK_S = 60.0
# The longest a drain spends posting Resume offers for the runs it cut (a second
# signal skips them: those runs' conversations are pruned, as for any run not offered).
OFFER_WAIT_S = 10.0


class Shutdown:
    """SIGTERM and SIGINT as events: the first asks for a drain, a second for haste."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()
        self.signal: int | None = None
        self.reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> Shutdown:
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            self._loop.add_signal_handler(sig, self.on_signal, sig)
        return self

    def remove(self) -> None:
        if self._loop is not None:
            for sig in SIGNALS:
                with contextlib.suppress(Exception):
                    self._loop.remove_signal_handler(sig)
            self._loop = None

    def on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.requested.is_set():
            if not self.hurry.is_set():
                log.warning("%s again: cancelling the runs now", name)
            self.hurry.set()
            return
        self.signal = sig
        self.request(name)

    def request(self, reason: str) -> None:
        if not self.requested.is_set():
            self.reason = reason
            self.requested.set()


async def drain(
    app: App, *, grace_s: float, hurry: asyncio.Event | None = None, clock: Clock | None = None
) -> DrainReport:
    """Stop intake (the scheduler first), let running runs finish within ``grace_s``
    (cut short when ``hurry`` is set), cancel the rest with a note to their member.
    Leaves Discord and the app open: the cancelled runs' notes still need them."""
    await app.stop_intake()
    if app.membership is not None and await app.membership.hand_over():
        log.info("another instance answers from now on; finishing the runs in flight")
    app.runner.stop_intake()
    grace = _Grace(grace_s, hurry, clock or RealClock())
    started = asyncio.get_running_loop().time()
    # Why before_cut: an approval question a cut run leaves says it was the restart.
    report = await app.runner.drain(grace_s, clock=grace, before_cut=app.approvals.restarting)
    log.info("drained in %.1fs: %s", asyncio.get_running_loop().time() - started, report)
    await _offer_stopped(app, report, hurry)
    return report


async def _offer_stopped(app: App, report: DrainReport, hurry: asyncio.Event | None) -> None:
    """Offer the chat runs the drain cut to their members to resume (a skill's slot is
    not offered: its schedule runs it again), within :data:`OFFER_WAIT_S`."""
    if not report.stopped or (hurry is not None and hurry.is_set()):
        return
    try:
        async with asyncio.timeout(OFFER_WAIT_S):
            await app.resume.offer_interrupted(report.stopped)
    except TimeoutError:
        log.warning("stopped before every cut run was offered to resume (%gs)", OFFER_WAIT_S)
    except Exception:
        # Why not raise: the drain goes on; what was not offered is pruned later.
        log.warning("could not offer the cut runs to resume", exc_info=True)


@dataclass(slots=True)
class _Grace:
    """A clock whose ``sleep`` also ends when ``hurry`` is set (a second signal)."""

    seconds: float
    hurry: asyncio.Event | None
    clock: Clock

    def now(self) -> Any:
        return self.clock.now()

    def monotonic(self) -> float:
        return self.clock.monotonic()

    async def sleep(self, seconds: float) -> None:
        if self.hurry is None:
            await self.clock.sleep(seconds)
            return
        if self.hurry.is_set():
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        hurried = asyncio.ensure_future(self.hurry.wait())
        try:
            await asyncio.wait({sleeper, hurried}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, hurried):
                t.cancel()
            await asyncio.gather(sleeper, hurried, return_exceptions=True)


async def _watch_lease(app: App, shutdown: Shutdown) -> None:
    """Stop at once when the heartbeat learns this instance was declared dead."""
    if app.membership is None:
        return
    await app.membership.lost.wait()
    shutdown.request("lost its lease")
    shutdown.hurry.set()


async def _watch_lock(lock: InstanceLock, shutdown: Shutdown) -> None:
    from adapters.storage.lock import InstanceLocked

    while True:
        await asyncio.sleep(LOCK_CHECK_S)
        try:
            if not await lock.verify():
                log.warning("the database lock's connection dropped; took the lock again")
        except InstanceLocked as exc:
            log.error("lost the single-instance lock: %s; stopping", exc)
            shutdown.request("lost the lock")
            return
        except Exception:
            log.warning("could not check the database lock; will try again", exc_info=True)


async def _collect_once_warm(app: App) -> None:
    """The garbage collector back on once the models are built (off since the program
    began: :func:`bot.cli.entry`), with what the start made frozen."""
    from bot.cli._common import started

    try:
        await app.warm_models()
    finally:
        started()


async def serve(
    settings: Settings,
    token: str,
    *,
    build: Callable[..., Awaitable[App]] | None = None,
    make_bot: Callable[[App], CoterieBot] | None = None,
    shutdown: Shutdown | None = None,
) -> int:
    """``coterie run``: see the module docstring. Returns the exit code.

    ``build`` (``build_app``) and ``make_bot`` are for tests."""
    import discord

    from adapters.storage.lock import InstanceLock

    lock = await InstanceLock.acquire(settings.database_url)
    watcher: asyncio.Task[None] | None = None
    collector: asyncio.Task[None] | None = None
    try:
        if build is None:
            from bot.app import build_app

            build = build_app
        # Why warm: the providers' SDKs are imported before "ready", in a thread.
        app = await build(settings, recover=True, instance="bot", warm=True)
        collector = asyncio.create_task(_collect_once_warm(app), name="coterie-warm-gc")
        try:
            from bot.cli._preflight import check_app

            check_app(app)
            if make_bot is None:
                from bot.client import CoterieBot

                bot = CoterieBot(app=app, settings=settings, shards=app.membership)
            else:
                bot = make_bot(app)
        except BaseException:
            await app.close()
            raise
        shutdown = shutdown or Shutdown()
        shutdown.install()
        watcher = asyncio.create_task(_watch_lock(lock, shutdown), name="coterie-lock-watch")
        lease = asyncio.create_task(_watch_lease(app, shutdown), name="coterie-lease-watch")
        runner = asyncio.create_task(bot.start(token), name="coterie-bot")
        stop = asyncio.create_task(shutdown.requested.wait(), name="coterie-stop")
        try:
            await asyncio.wait({runner, stop}, return_when=asyncio.FIRST_COMPLETED)
            if shutdown.requested.is_set():
                log.info(
                    "stopping (%s): %d run(s) in flight, up to %gs to finish",
                    shutdown.reason,
                    app.runner.in_flight,
                    settings.shutdown_grace_s,
                )
            await drain(app, grace_s=settings.shutdown_grace_s, hurry=shutdown.hurry)
        finally:
            stop.cancel()
            lease.cancel()
            log.debug("closing the Discord connection, then the app")
            await bot.close()  # Discord first, then the app: audit, providers, database
            await asyncio.gather(runner, stop, lease, return_exceptions=True)
            shutdown.remove()
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if collector is not None:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
        log.debug("releasing the database's lock")
        await lock.release()
    error = runner.exception() if not runner.cancelled() else None
    if error is None:
        log.info("stopped")
        return 0
    from bot.cli._common import fail

    # Exit 2, like every mistake the operator must fix before a restart can help:
    # deploy/coterie.service does not restart on it (RestartPreventExitStatus=2).
    if isinstance(error, discord.LoginFailure):
        return fail("Discord rejected DISCORD_TOKEN; copy the token again from the portal")
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return fail(
            "enable the Message Content intent for the bot in the developer portal (Bot > "
            "Privileged Gateway Intents)"
        )
    from bot.client import discord_unreachable

    unreachable = discord_unreachable(error)
    if unreachable is not None:
        # Why exit 1, not 2: Discord or the network being down is not the operator's
        # mistake, and comes back; systemd retries every RestartSec (a restart a few
        # seconds apart is no loop that hurts), where exit 2 would leave the bot down
        # after a boot with no network until someone starts it by hand.
        return fail(unreachable, code=1)
    raise error


class Stopped(Exception):
    """The work was cancelled by SIGTERM (or SIGINT); ``code`` is the exit code."""

    def __init__(self, sig: int) -> None:
        self.signal = sig
        self.code = 128 + sig
        super().__init__(f"stopped by {signal.Signals(sig).name}")


async def cancel_on_sigterm(work: Awaitable[T]) -> T:
    """Await ``work`` in this task; SIGTERM (like SIGINT) cancels it, which closes a
    run the executor is in (status ``cancelled``, budget settled), and raises
    :class:`Stopped`."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    got: list[int] = []

    def on_signal(sig: int) -> None:
        if not got:
            got.append(sig)
            task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await work
    except asyncio.CancelledError:
        if got and task.uncancel() == 0:
            raise Stopped(got[0]) from None
        raise
    finally:
        for sig in SIGNALS:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
