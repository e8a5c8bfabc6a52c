"""The bot process's life: one instance per database, signals, a drain, a close.

``coterie run`` (:func:`serve`), in order::

    take the single-instance lock     a second `coterie run` refuses, naming the holder
    build the app                     upgrade the schema; recover crashed runs (lock held)
    check a model can answer          one line naming the key to set, before connecting
    connect to Discord                 ... until SIGTERM or SIGINT, then the drain:
    stop intake                       the scheduler stops; new requests read "restarting"
    let running runs finish           up to COTERIE_SHUTDOWN_GRACE_S (a second signal: now)
    cancel the rest                   "Stopped: coterie is restarting."; audit and budget closed
    close Discord, then the app       audit flush, providers, database
    release the lock                  exit 0, no traceback

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
    app.runner.stop_intake()
    grace = _Grace(grace_s, hurry, clock or RealClock())
    started = asyncio.get_running_loop().time()
    report = await app.runner.drain(grace_s, clock=grace)
    log.info("drained in %.1fs: %s", asyncio.get_running_loop().time() - started, report)
    return report


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
    try:
        if build is None:
            from bot.app import build_app

            build = build_app
        # Why warm: the providers' SDKs are imported before "ready", in a thread.
        app = await build(settings, recover=True, warm=True)
        try:
            from bot.cli._preflight import check_app

            check_app(app)
            if make_bot is None:
                from bot.client import CoterieBot

                bot = CoterieBot(app=app, settings=settings)
            else:
                bot = make_bot(app)
        except BaseException:
            await app.close()
            raise
        shutdown = shutdown or Shutdown()
        shutdown.install()
        watcher = asyncio.create_task(_watch_lock(lock, shutdown), name="coterie-lock-watch")
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
            await bot.close()  # Discord first, then the app: audit, providers, database
            await asyncio.gather(runner, stop, return_exceptions=True)
            shutdown.remove()
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await lock.release()
    error = runner.exception() if not runner.cancelled() else None
    if error is None:
        log.info("stopped")
        return 0
    if isinstance(error, discord.LoginFailure):
        from bot.cli._common import fail

        return fail("Discord rejected DISCORD_TOKEN; copy the token again from the portal", 1)
    if isinstance(error, discord.PrivilegedIntentsRequired):
        from bot.cli._common import fail

        return fail(
            "enable the Message Content intent for the bot in the developer portal (Bot > "
            "Privileged Gateway Intents)",
            1,
        )
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
