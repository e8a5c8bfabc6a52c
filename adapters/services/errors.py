"""The services' refusals: a request turned down for a reason written for the person.

::

    executor.errors.CoterieError
     └── Refusal                 str(exc) is the sentence the person sees (the renderer shows it as is)
          ├── NotAnsweringHere   coterie does not answer in this channel (/config answer-in)
          ├── InvalidSetting     a /config or budget value that cannot be used
          ├── RunNotFound        no run (or no unique run) matches an id or prefix
          ├── ExportTooLarge     an audit export past what one attachment may carry
          ├── OfferUnavailable   an interrupted run's Resume/Discard cannot be pressed (decided)
          │    ├── NotYourOffer  pressed by someone other than the run's member
          │    └── OfferExpired  pressed after the offer's time
          └── ApprovalUnavailable  an Approve/Deny press that cannot count (too late, nothing waits)
               ├── NotYourApproval  pressed by someone other than the member who may decide
               └── ApprovalDecided  decided already (the message says what, and by whom)
"""

from __future__ import annotations

from executor.errors import CoterieError

__all__ = [
    "ApprovalDecided",
    "ApprovalUnavailable",
    "ExportTooLarge",
    "InvalidSetting",
    "NotAnsweringHere",
    "NotYourApproval",
    "NotYourOffer",
    "OfferExpired",
    "OfferUnavailable",
    "Refusal",
    "RunNotFound",
]


class Refusal(CoterieError):
    """A request refused; the message is written for the person who asked."""


class NotAnsweringHere(Refusal):
    def __init__(self) -> None:
        super().__init__(
            "I don't answer in this channel: an admin chose where I do (`/config show`)."
        )


class InvalidSetting(Refusal):
    pass


class RunNotFound(Refusal):
    pass


class ExportTooLarge(Refusal):
    pass


class OfferUnavailable(Refusal):
    pass


class NotYourOffer(OfferUnavailable):
    pass


class OfferExpired(OfferUnavailable):
    pass


class ApprovalUnavailable(Refusal):
    pass


class NotYourApproval(ApprovalUnavailable):
    pass


class ApprovalDecided(ApprovalUnavailable):
    pass
