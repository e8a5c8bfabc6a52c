"""The services' refusals: a request turned down for a reason written for the person.

::

    executor.errors.CoterieError
     └── Refusal                 str(exc) is the sentence the person sees (the renderer shows it as is)
          ├── NotAnsweringHere   coterie does not answer in this channel (/config answer-in)
          ├── InvalidSetting     a /config or budget value that cannot be used
          ├── RunNotFound        no run (or no unique run) matches an id or prefix
          └── ExportTooLarge     an audit export past what one attachment may carry
"""

from __future__ import annotations

from executor.errors import CoterieError

__all__ = ["ExportTooLarge", "InvalidSetting", "NotAnsweringHere", "Refusal", "RunNotFound"]


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
