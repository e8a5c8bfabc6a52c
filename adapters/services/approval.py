"""Approving a tool call, host-neutral.

The executor has one :class:`~executor.ports.Approver` for every run;
:class:`DeliveryApprover` hands each request to the run's own delivery (which
knows the channel and the member), so a Discord run asks with buttons
(:mod:`adapters.discord.approval`) and a console run asks at the terminal. A
delivery that cannot ask (``Delivery.ask_approval``'s default) denies.
"""

from __future__ import annotations

from executor.ports import ApprovalDecision, ApprovalRequest

__all__ = ["DeliveryApprover"]


class DeliveryApprover:
    """The executor's approver: asks through the run's delivery."""

    async def approve(self, request: ApprovalRequest) -> ApprovalDecision:
        delivery = request.delivery
        if delivery is None:
            return ApprovalDecision(approved=False, reason="nobody can be asked to approve it here")
        return await delivery.ask_approval(request)
