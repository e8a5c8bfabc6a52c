"""Shared cog UI: pages of embeds, a confirm prompt, charts as attachments.

What every admin cog (/skill, /audit, /budget, /config, /forgetme) renders with,
kept below the cogs so they stay independent of each other (Red keeps its
``SimpleMenu``, ``ConfirmView`` and ``pagify`` in ``redbot/core/utils``).

- :class:`OwnedView`: a view only one member may press; anyone else is told,
  privately, that the buttons are not theirs.
- :class:`Paginator` and :func:`send_paginated`: Previous / Next over a list of
  embeds or over a page source fetched lazily (``async (index) -> Embed | None``),
  with a "Page i/n" footer; on timeout the buttons are disabled.
- :class:`ConfirmView` and :func:`confirm`: Confirm / Cancel for one member.
- :func:`embed_pages`: long text as embeds (cut by
  :func:`adapters.discord.split.split_message`, which also serves plain messages).
- :func:`png_file`: a chart as a ``discord.File`` with alt text.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import discord

from adapters.discord.split import split_message

__all__ = [
    "CONFIRM_TIMEOUT",
    "EMBED_DESCRIPTION_LIMIT",
    "NOT_YOURS",
    "PAGINATOR_TIMEOUT",
    "ConfirmView",
    "OwnedView",
    "PageSource",
    "Paginator",
    "confirm",
    "embed_pages",
    "png_file",
    "send_paginated",
]

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]

#: ``async (index) -> Embed | None``: page ``index`` (0-based), or None past the end.
PageSource = Callable[[int], Awaitable[discord.Embed | None]]

NOT_YOURS = "These buttons are not yours."
EMBED_DESCRIPTION_LIMIT = 4096
ATTACHMENT_DESCRIPTION_LIMIT = 1024
# Why 14 minutes, not 15: the buttons must keep working for at least 10 minutes, and
# on timeout the message is edited through the last click's interaction token, which
# Discord honours for 15 minutes; an ephemeral page can be edited no other way.
PAGINATOR_TIMEOUT = 14 * 60.0
CONFIRM_TIMEOUT = 120.0

_NO_PINGS = discord.AllowedMentions.none()
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class OwnedView(discord.ui.View):
    """A view whose components only ``author_id`` may use."""

    def __init__(self, author_id: int, *, timeout: float | None, refusal: str = NOT_YOURS) -> None:
        super().__init__(timeout=timeout)
        self.author_id = author_id
        self.refusal = refusal
        #: The message the view is on, when the sender recorded it (edited on timeout).
        self.message: discord.Message | None = None

    async def interaction_check(self, interaction: Interaction) -> bool:
        if interaction.user.id != self.author_id:
            await interaction.response.send_message(
                self.refusal, ephemeral=True, allowed_mentions=_NO_PINGS
            )
            return False
        return True

    def disable_all(self) -> None:
        for item in self.children:
            if isinstance(item, discord.ui.Button | discord.ui.Select):
                item.disabled = True


async def _send(interaction: Interaction, *, ephemeral: bool, **fields: Any) -> discord.Message:
    """Answer ``interaction`` with a message (a followup once it was answered or
    deferred) and return that message."""
    if interaction.response.is_done():
        return await interaction.followup.send(
            ephemeral=ephemeral, wait=True, allowed_mentions=_NO_PINGS, **fields
        )
    sent = await interaction.response.send_message(
        ephemeral=ephemeral, allowed_mentions=_NO_PINGS, **fields
    )
    if isinstance(sent.resource, discord.InteractionMessage):
        return sent.resource
    return await interaction.original_response()


# --- pages -----------------------------------------------------------------------------


class Paginator(OwnedView):
    """Previous / Next over pages of embeds, for the member who asked.

    ``pages`` is a sequence of embeds, or a :data:`PageSource`. A source is asked
    for each index at most once and in increasing order (fetched pages are kept),
    so it can page by cursor. With ``page_count=None`` the count is unknown: the
    next page is fetched ahead to know whether Next leads anywhere.

    Embeds are shown as copies with ``Page i/n`` in the footer (after any footer
    text of their own). On timeout the buttons are disabled by editing the message
    (:attr:`message`, or through the last click), HTTP errors ignored.
    """

    def __init__(
        self,
        pages: Sequence[discord.Embed] | PageSource,
        *,
        author_id: int,
        page_count: int | None = None,
        timeout: float | None = PAGINATOR_TIMEOUT,
        refusal: str = NOT_YOURS,
    ) -> None:
        super().__init__(author_id, timeout=timeout, refusal=refusal)
        self._cache: dict[int, discord.Embed] = {}
        if callable(pages):
            self._source: PageSource | None = pages
            self.page_count = page_count
        else:
            self._source = None
            self._cache = dict(enumerate(pages))
            self.page_count = len(pages)
        self.index = 0
        self._last_click: Interaction | None = None
        # Why: two quick clicks must not fetch or show pages out of order.
        self._lock = asyncio.Lock()
        self.previous_button: discord.ui.Button[Paginator] = discord.ui.Button(
            label="Previous", style=discord.ButtonStyle.secondary
        )
        self.next_button: discord.ui.Button[Paginator] = discord.ui.Button(
            label="Next", style=discord.ButtonStyle.secondary
        )
        self.previous_button.callback = self._on_previous  # type: ignore[method-assign]
        self.next_button.callback = self._on_next  # type: ignore[method-assign]
        self.add_item(self.previous_button)
        self.add_item(self.next_button)

    # -- pages

    async def _page(self, index: int) -> discord.Embed | None:
        if index < 0 or (self.page_count is not None and index >= self.page_count):
            return None
        if index in self._cache:
            return self._cache[index]
        if self._source is None:
            return None
        # Increasing order: fill every index before this one first.
        start = max(self._cache, default=-1) + 1
        for i in range(start, index + 1):
            page = await self._source(i)
            if page is None:
                self.page_count = i
                return None
            self._cache[i] = page
        return self._cache[index]

    async def show(self, index: int) -> discord.Embed | None:
        """Move to page ``index``: the embed to show (with its footer), the buttons
        updated; None when there is no such page (nothing changes)."""
        page = await self._page(index)
        if page is None:
            return None
        self.index = index
        if self.page_count is None:
            await self._page(index + 1)  # learns whether this is the last page
        has_next = self.page_count is None or index + 1 < self.page_count
        self.previous_button.disabled = index == 0
        self.next_button.disabled = not has_next
        return self._with_footer(page)

    def _would_fetch(self, index: int) -> bool:
        if self._source is None or index < 0:
            return False
        wanted = (index,) if self.page_count is not None else (index, index + 1)
        return any(
            i not in self._cache and (self.page_count is None or i < self.page_count)
            for i in wanted
        )

    @property
    def single_page(self) -> bool:
        return self.page_count is not None and self.page_count <= 1

    def _with_footer(self, page: discord.Embed) -> discord.Embed:
        embed = page.copy()
        where = f"Page {self.index + 1}"
        if self.page_count is not None:
            where += f"/{self.page_count}"
        own = page.footer.text
        embed.set_footer(text=f"{own} · {where}" if own else where, icon_url=page.footer.icon_url)
        return embed

    # -- buttons

    async def _on_previous(self, interaction: Interaction) -> None:
        await self._move(interaction, -1)

    async def _on_next(self, interaction: Interaction) -> None:
        await self._move(interaction, +1)

    async def _move(self, interaction: Interaction, step: int) -> None:
        async with self._lock:
            target = self.index + step
            if self._would_fetch(target):
                # Why: a page fetched from storage may take longer than Discord's 3 s.
                await interaction.response.defer()
            embed = await self.show(target)
            self._last_click = interaction
            fields: dict[str, Any] = {"view": self}
            if embed is not None:  # None: a stale click past an end; redraw the buttons
                fields["embed"] = embed
            if interaction.response.is_done():
                await interaction.edit_original_response(**fields)
            else:
                await interaction.response.edit_message(**fields)

    async def on_timeout(self) -> None:
        self.disable_all()
        await self._edit_quietly(view=self)

    async def _edit_quietly(self, **fields: Any) -> None:
        click = self._last_click
        try:
            if click is not None and not click.is_expired():
                await click.edit_original_response(**fields)
            elif self.message is not None:
                await self.message.edit(**fields)
        except discord.HTTPException:
            log.info("could not disable the page buttons", exc_info=True)


async def send_paginated(
    interaction: Interaction,
    pages: Sequence[discord.Embed] | PageSource,
    *,
    page_count: int | None = None,
    ephemeral: bool = False,
    # Why the name: it is the view's idle timeout (discord.py's word); this returns at once.
    timeout: float | None = PAGINATOR_TIMEOUT,  # noqa: ASYNC109
    empty: str = "Nothing to show.",
) -> Paginator:
    """Answer ``interaction`` with the first page and, when there are more, the buttons.

    Works whether or not the interaction was already answered or deferred. With no
    pages at all, answers ``empty`` instead. Returns the paginator (finished at once
    when there was one page or none).
    """
    view = Paginator(pages, author_id=interaction.user.id, page_count=page_count, timeout=timeout)
    first = await view.show(0)
    if first is None:
        view.stop()
        await _send(interaction, ephemeral=ephemeral, content=empty)
        return view
    if view.single_page:
        view.stop()
        await _send(interaction, ephemeral=ephemeral, embed=first)
        return view
    view.message = await _send(interaction, ephemeral=ephemeral, embed=first, view=view)
    return view


def embed_pages(
    text: str,
    *,
    title: str | None = None,
    colour: discord.Colour | int | None = None,
    limit: int = EMBED_DESCRIPTION_LIMIT,
) -> list[discord.Embed]:
    """``text`` as embed descriptions of at most ``limit`` characters (code fences
    closed and reopened at each cut), each with ``title``."""
    return [
        discord.Embed(title=title, description=piece, colour=colour)
        for piece in split_message(text, limit=limit)
    ]


# --- confirm ---------------------------------------------------------------------------


class ConfirmView(OwnedView):
    """Confirm / Cancel for ``author_id``.

    ``await view.wait()``, then :attr:`confirmed` is True (Confirm), False (Cancel)
    or None (no answer within ``timeout``). After a choice the buttons are disabled
    (:meth:`on_choice` edits the message; override it to say more) and the view
    stops; :attr:`interaction` is the click that decided. On timeout the buttons are
    disabled on :attr:`message` when it is set.
    """

    def __init__(
        self,
        author_id: int,
        *,
        timeout: float | None = CONFIRM_TIMEOUT,
        confirm_label: str = "Confirm",
        cancel_label: str = "Cancel",
        confirm_style: discord.ButtonStyle = discord.ButtonStyle.primary,
        cancel_style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        refusal: str = NOT_YOURS,
    ) -> None:
        super().__init__(author_id, timeout=timeout, refusal=refusal)
        self.confirmed: bool | None = None
        self.interaction: Interaction | None = None
        self.confirm_button: discord.ui.Button[ConfirmView] = discord.ui.Button(
            label=confirm_label, style=confirm_style
        )
        self.cancel_button: discord.ui.Button[ConfirmView] = discord.ui.Button(
            label=cancel_label, style=cancel_style
        )
        self.confirm_button.callback = self._on_confirm  # type: ignore[method-assign]
        self.cancel_button.callback = self._on_cancel  # type: ignore[method-assign]
        self.add_item(self.confirm_button)
        self.add_item(self.cancel_button)

    async def _on_confirm(self, interaction: Interaction) -> None:
        await self._choose(interaction, True)

    async def _on_cancel(self, interaction: Interaction) -> None:
        await self._choose(interaction, False)

    async def _choose(self, interaction: Interaction, confirmed: bool) -> None:
        if self.confirmed is not None:
            # Why: a second click can be dispatched before the first one stopped the view.
            await interaction.response.defer()
            return
        self.confirmed = confirmed
        self.interaction = interaction
        self.disable_all()
        try:
            await self.on_choice(interaction, confirmed)
        finally:
            self.stop()

    async def on_choice(self, interaction: Interaction, confirmed: bool) -> None:
        """Answer the click; the default disables the buttons on the message."""
        await interaction.response.edit_message(view=self)

    async def on_timeout(self) -> None:
        self.disable_all()
        if self.message is None:
            return
        try:
            await self.message.edit(view=self)
        except discord.HTTPException:
            log.info("could not disable the confirm buttons", exc_info=True)


async def confirm(
    interaction: Interaction,
    text: str,
    *,
    confirm_label: str = "Confirm",
    cancel_label: str = "Cancel",
    danger: bool = False,
    # Why not asyncio.timeout: the view must see its timeout to disable its buttons.
    timeout: float = CONFIRM_TIMEOUT,  # noqa: ASYNC109
) -> bool:
    """Ask the member behind ``interaction``, privately; True only if they press Confirm.

    Cancel and no answer within ``timeout`` are both False. ``danger`` paints the
    Confirm button red (for deletions). Works whether or not the interaction was
    already answered or deferred; afterwards, tell the member the outcome with
    ``interaction.followup``.
    """
    view = ConfirmView(
        interaction.user.id,
        timeout=timeout,
        confirm_label=confirm_label,
        cancel_label=cancel_label,
        confirm_style=discord.ButtonStyle.danger if danger else discord.ButtonStyle.primary,
    )
    view.message = await _send(interaction, ephemeral=True, content=text, view=view)
    await view.wait()
    return view.confirmed is True


# --- files -----------------------------------------------------------------------------


def png_file(data: bytes, filename: str, *, description: str) -> discord.File:
    """A PNG (a chart) as an attachment with alt text ``description``.

    Show it in an embed with ``embed.set_image(url=f"attachment://{file.filename}")``.
    """
    if not data.startswith(_PNG_MAGIC):
        raise ValueError("not a PNG image")
    if not filename.lower().endswith(".png"):
        filename += ".png"
    return discord.File(
        io.BytesIO(data),
        filename=filename,
        description=description[:ATTACHMENT_DESCRIPTION_LIMIT],
    )
