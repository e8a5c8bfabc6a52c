"""The Discord client: ``CoterieBot``, its command tree, and the one error renderer.

Contract for cogs (``commands/<group>.py``): each module is a discord.py
extension with ``async def setup(bot) -> None`` that adds one cog. A cog reads the
app at command time through ``interaction.client.app``, typed by its own protocol
(see :mod:`adapters.discord.client`), never in ``setup``: ``coterie sync`` loads
the cogs with ``app=None`` to read the command tree. Errors raised from a slash
command reach the person through :meth:`CoterieTree.on_error`; a cog does not
catch them to render them itself. An autocomplete answers only whoever may run its
command (:meth:`CoterieTree.interaction_check`): the privilege checks of a command
hold for its autocompletes too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.client import CoterieClient
from adapters.discord.identity import gate_autocomplete
from adapters.services.instances import FixedShards, ShardPlanner
from bot.app import App
from bot.settings import Settings
from executor import errors as xerr

if TYPE_CHECKING:
    from adapters.discord.dm import DirectMessages
    from adapters.discord.escalation import DiscordEscalator
    from adapters.services.resume import ResumeService

__all__ = [
    "DEFAULT_EXTENSIONS",
    "CoterieBot",
    "CoterieTree",
    "coterie_intents",
    "coterie_permissions",
    "discord_unreachable",
    "render_error",
]

log = logging.getLogger("coterie.discord")

DEFAULT_EXTENSIONS: tuple[str, ...] = (
    "commands.persona",
    "commands.chat",
    "commands.skill",
    "commands.config",
    "commands.audit",
    "commands.budget",
    "commands.privacy",
    "commands.memory",
)
MAX_MESSAGE = 2000


def coterie_intents() -> discord.Intents:
    """The least that works: guilds (channels, threads, roles), guild and DM messages,
    and message content (to read persona threads without a mention). Message
    content is privileged: enable it for the bot in the developer portal.
    No members, no presences."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True
    return intents


def coterie_permissions() -> discord.Permissions:
    """Exactly the permissions coterie asks for in its invite."""
    return discord.Permissions(
        view_channel=True,
        send_messages=True,
        send_messages_in_threads=True,
        create_public_threads=True,
        embed_links=True,
        attach_files=True,
        read_message_history=True,
        manage_webhooks=True,  # personas speak with their own name and avatar
        use_application_commands=True,
    )


# --- Discord out of reach ------------------------------------------------------------

STATUS_PAGE = "https://discordstatus.com"


def _api_host() -> str:
    from urllib.parse import urlsplit

    return urlsplit(discord.http.Route.BASE).netloc or "discord.com"


def discord_unreachable(error: BaseException) -> str | None:
    """One line for an error that means Discord could not be reached or would not answer
    (no network, DNS, a firewall or proxy, an outage: a 5xx); None for any other error."""
    host = _api_host()
    if isinstance(error, discord.DiscordServerError):
        return (
            f"Discord ({host}) answered {error.status} {error.response.reason or ''}".rstrip()
            + f": it is having trouble (see {STATUS_PAGE}); start coterie again later"
        )
    if isinstance(error, aiohttp.ClientError):
        reason = " ".join(str(error).split()) or type(error).__name__
        return (
            f"cannot reach Discord ({host}): {reason}; check this machine's network, DNS, "
            f"firewall or proxy (and {STATUS_PAGE}), then start coterie again"
        )
    return None


def _sync_failed(error: discord.HTTPException | aiohttp.ClientError, guild_id: int) -> str:
    what = f"could not sync the slash commands to dev guild {guild_id}"
    if isinstance(error, discord.Forbidden):
        return (
            f"{what}: Discord refused ({error.status}); is the bot in that server, invited "
            "with the applications.commands scope (coterie invite)? Going on without them"
        )
    said = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, discord.HTTPException):
        said = f"Discord answered {error.status}: {said}"
    return (
        f"{what} ({said}); going on with the commands Discord already has "
        f"(`coterie sync --guild {guild_id}` publishes them later)"
    )


# --- the one error renderer -------------------------------------------------------


def _perm_names(names: Sequence[str]) -> str:
    pretty = [n.replace("_", " ").replace("guild", "server").title() for n in names]
    return " and ".join(pretty) if len(pretty) < 3 else ", ".join(pretty)


def _render_coterie_error(exc: xerr.CoterieError) -> str | None:
    from adapters.discord.budget_text import budget_refusal
    from adapters.services.errors import Refusal
    from memory.errors import MemoryError_
    from personas.errors import PersonaError
    from skills.errors import SkillError

    if isinstance(exc, PersonaError | SkillError | Refusal | MemoryError_):
        return str(exc)  # written for the person: "no persona named 'x'; try /persona list"
    if isinstance(exc, xerr.BudgetExceeded):
        return budget_refusal(exc.details)  # spent, limit, when it frees, how to ask an admin
    if isinstance(exc, xerr.DispatchRefused):
        return f"I won't start that run: {exc}."
    if isinstance(exc, xerr.RunRefused):
        return f"That run was refused before it started: {exc}."
    if isinstance(exc, xerr.ConfigError):
        return (
            f"coterie is not configured for that ({exc}). An admin needs to fix the configuration."
        )
    if isinstance(exc, xerr.AllModelsFailed | xerr.RateLimited | xerr.Overloaded):
        return "The AI providers are busy or failing right now. Try again in a minute."
    if isinstance(exc, xerr.ModelAPIError) and exc.retriable:
        return "The AI provider did not answer. Try again in a minute."
    return None


def render_error(error: BaseException) -> tuple[str, str | None]:
    """The sentence for the person, and a reference when the traceback must be logged."""
    from adapters.storage.db import DatabaseError

    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, app_commands.TransformerError) and isinstance(
        error.__cause__, xerr.CoterieError
    ):
        error = error.__cause__
    if isinstance(error, xerr.HostBusy):
        # Why before ConfigError: a lock held past its timeout is transient, not a
        # configuration to fix; its text names a server path, so it goes to the log only.
        ref = secrets.token_hex(3).upper()
        return f"coterie is busy right now; try again in a moment (ref {ref}).", ref
    if isinstance(error, DatabaseError):
        ref = secrets.token_hex(3).upper()
        return (
            "coterie cannot use its database right now; the admins can find it in the log "
            f"(ref {ref}).",
            ref,
        )
    if isinstance(error, xerr.CoterieError):
        text = _render_coterie_error(error)
        if text is not None:
            return text, None
    elif isinstance(error, app_commands.MissingPermissions):
        return f"You need the {_perm_names(error.missing_permissions)} permission for this.", None
    elif isinstance(error, app_commands.BotMissingPermissions):
        names = _perm_names(error.missing_permissions)
        return f"I need the {names} permission in this channel; ask an admin to grant it.", None
    elif isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {max(error.retry_after, 1):.0f}s.", None
    elif isinstance(error, app_commands.NoPrivateMessage):
        return "This command only works in a server.", None
    elif isinstance(error, app_commands.MissingRole | app_commands.MissingAnyRole):
        return "You don't have the role this command needs.", None
    elif isinstance(error, app_commands.CheckFailure):
        # Why: discord.py's own message for a check that returned False is for developers;
        # our checks raise CheckFailure subclasses whose message is written for the person.
        if type(error) is not app_commands.CheckFailure and str(error):
            return str(error), None
        return "You can't use this command here.", None
    elif isinstance(error, app_commands.TransformerError):
        return f"I couldn't understand “{error.value}” for that option.", None
    elif isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
        return "This command changed since Discord last saw it; try again in a minute.", None
    ref = secrets.token_hex(3).upper()
    return (
        f"Something went wrong on our side; the admins can find it in the log (ref {ref}).",
        ref,
    )


class CoterieTree(app_commands.CommandTree["CoterieBot"]):
    async def interaction_check(self, interaction: discord.Interaction[CoterieBot], /) -> bool:
        # Why here: discord.py runs a command's checks before its callback, never
        # before its autocomplete; the tree sees every autocomplete of every command,
        # so a new one is held to its command's privilege without anyone remembering.
        return await gate_autocomplete(interaction)

    async def on_error(
        self, interaction: discord.Interaction[CoterieBot], error: app_commands.AppCommandError
    ) -> None:
        text, ref = render_error(error)
        command = interaction.command.qualified_name if interaction.command else "?"
        if ref is not None:
            log.error("slash command /%s failed (ref %s)", command, ref, exc_info=error)
        else:
            log.info("slash command /%s refused: %s", command, text)
        text = text[:MAX_MESSAGE]
        try:
            if interaction.response.is_done():
                await interaction.followup.send(
                    text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
                )
            else:
                await interaction.response.send_message(
                    text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
                )
        except discord.HTTPException:
            # The interaction may have expired; the log above still has it.
            log.warning("could not tell the user about the error on /%s", command, exc_info=True)


# --- the client -------------------------------------------------------------------


class CoterieBot(CoterieClient[App]):
    """The Discord client. Dependencies are keyword-only; ``options`` go to discord.py.

    ``app=None`` only with ``services=False`` (``coterie sync`` reads the command tree).
    """

    def __init__(
        self,
        *,
        app: App | None,
        settings: Settings,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        services: bool = True,
        shards: ShardPlanner | None = None,
        **options: Any,
    ) -> None:
        if app is None and services:
            raise ValueError("a bot with services needs an app")
        # Why: the shards come from the app's membership on PostgreSQL (shared out
        # between the processes); else the pinned ones, else all of Discord's count.
        if shards is None:
            shards = FixedShards(settings.shard_count, settings.shard_ids)
        options.setdefault("intents", coterie_intents())
        # Why: discord.py fires on_ready this long after the last GUILD_CREATE (2 s by
        # default, for bots in thousands of guilds); a small bot's arrive at once, and a
        # late one is still handled when it comes.
        options.setdefault("guild_ready_timeout", 0.5)
        options.setdefault(
            "allowed_mentions",
            discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=True),
        )
        super().__init__(
            app=app,
            owner_ids=frozenset(settings.owner_ids),
            command_prefix=commands.when_mentioned,
            tree_cls=CoterieTree,
            help_command=None,
            shards=shards,
            identify_interval_s=settings.identify_interval_s,
            **options,
        )
        self.settings = settings
        self.extension_names: tuple[str, ...] = tuple(extensions)
        # Why a switch: `coterie sync` needs the command tree but no services and no dev sync.
        self.services = services
        self._app_started = False
        self._app_closed = False
        self._escalator: DiscordEscalator | None = None
        self._mcp_poster: Callable[[str, str], Awaitable[None]] | None = None
        self._looks: set[asyncio.Task[None]] = set()
        self._direct: DirectMessages | None = None
        self._offers: list[asyncio.Task[None]] = []
        # The offers' database work under way: finished, not cut, when the client closes.
        self._offer_work: asyncio.Future[Any] | None = None

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None:
        """discord.py's dispatch, except that a member's reply or thread message in a
        channel whose persona webhooks were not read yet (the first after a restart)
        waits until they are: the chat flow then knows the personas' earlier messages."""
        message = args[0] if event_name == "message" and args else None
        if (
            isinstance(message, discord.Message)
            and not message.author.bot
            and self.webhooks.needs_look(message)
        ):
            task = asyncio.create_task(
                self._dispatch_after_look(message, kwargs), name="coterie-webhook-look"
            )
            self._looks.add(task)
            task.add_done_callback(self._looks.discard)
            return
        super().dispatch(event_name, *args, **kwargs)

    async def _dispatch_after_look(self, message: discord.Message, kwargs: dict[str, Any]) -> None:
        try:
            await self.webhooks.look(message)
        except Exception:  # never lose the message over it
            log.warning(
                "could not read the webhooks of channel %s", message.channel.id, exc_info=True
            )
        super().dispatch("message", message, **kwargs)

    async def setup_hook(self) -> None:
        for name in self.extension_names:
            await self._load(name)
        if not self.services:
            return
        app = self.app
        from adapters.discord.approval import ApprovalButton
        from adapters.discord.escalation import DiscordEscalator

        # The Approve/Deny buttons: a press is recorded here for a run waiting in any
        # process (the app's questions are in the database; an app built for a test may
        # have none, and then this process's own serve).
        approvals = getattr(app, "approvals", None)
        if approvals is not None:
            self.approvals = approvals
        self.add_dynamic_items(ApprovalButton)

        # Route the critic's stops and kills to the guilds' admin channels.
        self._escalator = DiscordEscalator(self, app.guild_settings)
        app.escalations.attach(self._escalator)
        # An MCP tool that changed, as a member's call revealed it: that guild's admin channel.
        mcp = getattr(app, "mcp", None)
        if mcp is not None:
            escalator = self._escalator

            async def post_mcp_notice(guild_id: str, text: str) -> None:
                channel = await escalator.admin_channel(guild_id)
                if channel is not None:
                    await escalator.sender.send(channel, text)

            self._mcp_poster = post_mcp_notice
            mcp.attach(post_mcp_notice)
        from adapters.discord.skill_host import DiscordSkillHost

        # Where scheduled skills post, and who hears when a schedule keeps failing.
        app.skill_service.host = DiscordSkillHost(
            self,
            webhooks=self.webhooks,
            guild_settings=app.guild_settings,
            approvals=self.approvals,
            owner_ids=self.owner_user_ids,
        )
        # Budget warnings go to members as DMs (an app built for a test may have none).
        alerts = getattr(app, "budget_alerts", None)
        if alerts is not None:
            from adapters.discord.dm import DirectMessages

            self._direct = DirectMessages(self)
            alerts.attach(self._direct)
        self._start_offers(app)
        await app.start()
        self._app_started = True
        if self.settings.dev_guild_id:
            await self._sync_dev_guild(self.settings.dev_guild_id)

    def _start_offers(self, app: App) -> None:
        """The buttons of the offers to resume interrupted runs (from this start and
        earlier ones, any process's), and the offer loop: the runs recovery closed
        (this start's, and a dead process's that this one settles later), posted once
        Discord is ready, and the sweep that closes offers past their time."""
        resume = getattr(app, "resume", None)  # an app built for a test may have none
        if resume is None:
            return
        from adapters.discord.resume import DiscordResumeHost, OfferButton

        self.add_dynamic_items(OfferButton)
        resume.host = DiscordResumeHost(self)
        self._offers = [asyncio.create_task(self._offer(resume), name="coterie-resume-offers")]

    async def _offer(self, resume: ResumeService) -> None:
        from adapters.services.resume import SWEEP_S

        await self.wait_until_ready()
        while True:
            run_ids = resume.take_found()
            work: Awaitable[Any] = resume.offer_interrupted(run_ids) if run_ids else resume.sweep()
            self._offer_work = asyncio.ensure_future(work)
            try:
                # Why shielded: a close cancels this task; a write it cut short would
                # leave a connection behind the database's close.
                await asyncio.shield(self._offer_work)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Why not raise: nobody awaits this task; the runs stay closed as
                # interrupted, and those not offered yet are tried at the next sweep.
                log.warning("could not offer or sweep the runs to resume", exc_info=True)
                resume.found(run_ids, wake=False)
            await resume.wait_found(SWEEP_S)

    async def _sync_dev_guild(self, guild_id: int) -> None:
        """Publish the commands to the dev guild. Why never fatal: the bot works with the
        commands Discord already has; a 5xx or a missing scope is one warning, not a stop."""
        guild = discord.Object(id=guild_id)
        self.tree.copy_global_to(guild=guild)
        try:
            synced = await self.tree.sync(guild=guild)
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            log.warning("%s", _sync_failed(exc, guild_id))
            return
        log.info("synced %d commands to dev guild %s", len(synced), guild.id)

    def _detach_escalator(self) -> None:
        # Why: the app may outlive this client (tests, a restart); never post through a closed one.
        if self.has_app and self.services:
            self.app.skill_service.host = None
        escalator, self._escalator = self._escalator, None
        if escalator is not None and self.has_app:
            self.app.escalations.detach(escalator)
        poster, self._mcp_poster = self._mcp_poster, None
        mcp = getattr(self.app, "mcp", None) if self.has_app else None
        if poster is not None and mcp is not None:
            mcp.detach(poster)
        direct, self._direct = self._direct, None
        alerts = getattr(self.app, "budget_alerts", None) if self.has_app else None
        if direct is not None and alerts is not None:
            alerts.detach(direct)
        resume = getattr(self.app, "resume", None) if self.has_app else None
        if resume is not None:
            resume.host = None

    async def _load(self, name: str) -> None:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            log.debug("extension %s does not exist yet; skipped", name)
            return
        await self.load_extension(name)

    async def on_ready(self) -> None:
        if self.services and self.has_app:
            # Why here and not in setup_hook: the providers' SDKs, importing in a thread
            # since the start, overlap the login and the guilds' arrival; "ready" then
            # still means that a member's first message imports nothing.
            await self.app.warm_models()
        user = self.user
        name, uid = (user.name, user.id) if user else ("?", 0)
        log.info(
            "coterie ready as %s (%s) in %d guilds, shards %s of %s",
            name,
            uid,
            len(self.guilds),
            ",".join(map(str, sorted(self.served_shards))) or "none",
            self.shard_count,
        )

    async def on_shard_ready(self, shard_id: int) -> None:
        log.info("shard %d of %s ready", shard_id, self.shard_count)
        if self.has_app and self.app.membership is not None:
            # The heartbeat reports the shards served: say so now, not a beat later.
            self.app.membership.wake()

    async def on_message(self, message: discord.Message, /) -> None:
        # Why: coterie has no prefix commands; cogs listen to messages themselves.
        return None

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        """An event listener raised: log the traceback with a reference and, when a
        member's message was being handled, tell them (with the same renderer as
        slash commands, no mentions, no traceback)."""
        error = sys.exc_info()[1]
        if error is None:  # pragma: no cover - discord.py calls this from an except block
            return await super().on_error(event_method, *args, **kwargs)
        text, ref = render_error(error)
        message = args[0] if args and isinstance(args[0], discord.Message) else None
        if ref is not None or message is None:
            log.error("event %s failed (ref %s)", event_method, ref, exc_info=error)
        else:
            log.info("event %s refused: %s", event_method, text)
        if event_method != "on_message" or message is None or message.author.bot:
            return None
        try:
            await message.channel.send(
                text[:MAX_MESSAGE],
                reference=message.to_reference(fail_if_not_exists=False),
                mention_author=False,
                allowed_mentions=discord.AllowedMentions.none(),
            )
        except discord.HTTPException:
            log.warning("could not tell the member about the error (ref %s)", ref, exc_info=True)
        return None

    async def close(self) -> None:
        """Close the Discord connection, then the app (audit, providers, database).

        Why in that order: whatever is still answering needs the app until Discord is
        gone; a shutdown drains the runs before it gets here (:mod:`bot.lifecycle`)."""
        self._detach_escalator()
        offers, self._offers = self._offers, []
        for task in offers:
            task.cancel()
        await asyncio.gather(*offers, return_exceptions=True)
        work, self._offer_work = self._offer_work, None
        if work is not None:
            await asyncio.gather(work, return_exceptions=True)
        try:
            await super().close()
        finally:
            if self.has_app and not self._app_closed:
                self._app_closed = True
                await self.app.close()


if TYPE_CHECKING:
    from adapters.discord.resume import ResumeApp
    from commands.audit import AuditApp
    from commands.budget import BudgetApp
    from commands.chat import ChatApp
    from commands.config import ConfigApp
    from commands.persona import PersonaApp
    from commands.privacy import PrivacyApp
    from commands.skill import SkillApp

    def _app_serves_every_cog(app: App) -> tuple[ChatApp, PersonaApp, SkillApp]:
        # Why: discord.py hands cogs the client at run time; this is where mypy checks
        # that the App satisfies each cog's protocol.
        return app, app, app

    def _app_serves_the_admin_cogs(app: App) -> tuple[ConfigApp, AuditApp, BudgetApp, PrivacyApp]:
        return app, app, app, app

    def _app_serves_the_resume_buttons(app: App) -> ResumeApp:
        return app
