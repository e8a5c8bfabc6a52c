"""The skills package's exceptions. Every message is written for the person who asked.

::

    CoterieError (executor.errors)
    └── SkillError
        ├── SkillNotFound            no skill by that name in this guild
        │   └── SkillVersionNotFound no such version; lists the known ones
        ├── SkillExists              the name belongs to someone else's skill
        ├── SkillPermissionDenied    only its owner or an admin may change it
        ├── InvalidSkill             a field breaks a rule; names the field and the rule
        │   └── SkillFileError       a skill Markdown file is malformed; names the file
        │       └── UnsafeSkillFile  refused unread (size, depth, nodes, YAML anchors/aliases)
        ├── ArgumentError            a template argument is missing, unknown or malformed
        └── ScheduleError            a schedule cannot be made as asked
            ├── ScheduleNotFound     no such schedule (or not this member's)
            ├── InvalidCron          says what is wrong and gives an example
            ├── InvalidTime          an unreadable ``at:``, or one in the past
            ├── UnknownTimezone      not an IANA zone name
            ├── TooFrequent          runs closer together than the minimum interval
            ├── TooManySchedules     the member already has the maximum
            └── OverBudget           the cost preview passes the owner's budget
"""

from __future__ import annotations

from collections.abc import Sequence

from executor.errors import CoterieError

__all__ = [
    "ArgumentError",
    "InvalidCron",
    "InvalidSkill",
    "InvalidTime",
    "OverBudget",
    "ScheduleError",
    "ScheduleNotFound",
    "SkillError",
    "SkillExists",
    "SkillFileError",
    "SkillNotFound",
    "SkillPermissionDenied",
    "SkillVersionNotFound",
    "TooFrequent",
    "TooManySchedules",
    "UnknownTimezone",
    "UnsafeSkillFile",
]


class SkillError(CoterieError):
    """Base of the skill errors. ``str(exc)`` is safe to show to the person."""


class SkillNotFound(SkillError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no skill named {name!r} in this server; try /skill list")


class SkillExists(SkillError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"the skill {name!r} belongs to someone else in this server; choose another name"
        )


class SkillPermissionDenied(SkillError):
    def __init__(self, name: str, action: str) -> None:
        self.name = name
        self.action = action
        super().__init__(f"only the owner of {name!r} or an admin may {action} it")


class InvalidSkill(SkillError):
    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class SkillFileError(InvalidSkill):
    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        super().__init__("", f"{source} {problem}")


class ArgumentError(SkillError):
    """A template argument problem (missing, unknown, malformed ``key=value``)."""


class ScheduleError(SkillError):
    """A schedule that cannot be made as asked."""


class ScheduleNotFound(ScheduleError):
    def __init__(self, what: str) -> None:
        super().__init__(f"no schedule {what}; try /skill schedules")


class InvalidCron(ScheduleError):
    def __init__(self, expression: str, problem: str) -> None:
        self.expression = expression
        shown = expression if len(expression) <= 60 else expression[:59] + "…"
        super().__init__(
            f"`{shown}` is not a cron expression: {problem}. Five fields: minute hour "
            "day-of-month month day-of-week, e.g. `0 9 * * 1-5` (weekdays at 9:00)"
        )


class InvalidTime(ScheduleError):
    pass


class UnknownTimezone(ScheduleError):
    def __init__(self, name: str) -> None:
        shown = name if len(name) <= 40 else name[:39] + "…"
        super().__init__(
            f"{shown!r} is not a time zone I know; use an IANA name like "
            "`Europe/Paris`, `America/New_York` or `UTC`"
        )


class TooFrequent(ScheduleError):
    pass


class TooManySchedules(ScheduleError):
    pass


class OverBudget(ScheduleError):
    pass


class SkillVersionNotFound(SkillNotFound):
    def __init__(self, name: str, version: int, known: Sequence[int]) -> None:
        self.version = version
        self.known = tuple(known)
        SkillError.__init__(self, f"{name!r} has no version {version}; {_versions(self.known)}")
        self.name = name


def _versions(known: Sequence[int]) -> str:
    if not known:
        return "it has no versions"
    if len(known) > 12:
        return f"its versions are 1 to {max(known)} (see /skill show)"
    return "its versions are " + ", ".join(f"v{v}" for v in known)


class UnsafeSkillFile(SkillFileError):
    """A skill file refused before its contents were read as data (``kind`` says which
    limit: size, depth, nodes, anchor, alias). The message never quotes the file."""

    def __init__(self, source: str, problem: str, *, kind: str) -> None:
        self.kind = kind
        super().__init__(source, problem)
