"""Where the critic's stops and kills go: the log always, the host's destination too.

The critic is built with the app, before any Discord client exists, and keeps its
:class:`Escalations` for life; the Discord client plugs its admin-channel escalator
in when it starts (:meth:`Escalations.attach`) and unplugs it when it closes, so an
app that outlives a client (tests, a reconnect) never posts through a closed one.
"""

from __future__ import annotations

import logging

from executor.ports import Escalation, Escalator

__all__ = ["Escalations"]

log = logging.getLogger("coterie.critic")


class Escalations:
    """``executor.ports.Escalator``: logs each escalation, then hands it on."""

    def __init__(self, destination: Escalator | None = None) -> None:
        self.destination = destination

    def attach(self, destination: Escalator) -> None:
        self.destination = destination

    def detach(self, destination: Escalator) -> None:
        if self.destination is destination:
            self.destination = None

    async def escalate(self, escalation: Escalation) -> None:
        log.warning(
            "critic %s run %s (%s, %s): %s",
            escalation.action,
            escalation.run_id,
            escalation.agent,
            escalation.caller.user_id,
            escalation.reason,
        )
        if self.destination is not None:
            await self.destination.escalate(escalation)
