"""Skills: saved agent tasks, their versions, their files, and ``to_runnable``.

The names below are loaded on first use, so that importing ``skills.model`` or
``skills.errors`` (what the services need) does not import the SQL store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from executor.lazy import attach as _attach

if TYPE_CHECKING:
    from skills.errors import (
        ArgumentError,
        InvalidCron,
        InvalidSkill,
        InvalidTime,
        OverBudget,
        ScheduleError,
        ScheduleNotFound,
        SkillError,
        SkillExists,
        SkillFileError,
        SkillNotFound,
        SkillPermissionDenied,
        SkillVersionNotFound,
        TooFrequent,
        TooManySchedules,
        UnknownTimezone,
        UnsafeSkillFile,
    )
    from skills.markdown import parse_markdown, render_markdown
    from skills.model import (
        SkillDeleted,
        SkillInfo,
        SkillSpec,
        SkillVersionInfo,
        check_name,
        parse_arguments,
        render_prompt,
        template_arguments,
        validate_spec,
    )
    from skills.runnable import agent_name, skill_bounds, to_runnable, usable_tools
    from skills.store import SkillStore

_WHERE = {
    "ArgumentError": "skills.errors",
    "InvalidCron": "skills.errors",
    "InvalidSkill": "skills.errors",
    "InvalidTime": "skills.errors",
    "OverBudget": "skills.errors",
    "ScheduleError": "skills.errors",
    "ScheduleNotFound": "skills.errors",
    "SkillDeleted": "skills.model",
    "SkillError": "skills.errors",
    "SkillExists": "skills.errors",
    "SkillFileError": "skills.errors",
    "SkillInfo": "skills.model",
    "SkillNotFound": "skills.errors",
    "SkillPermissionDenied": "skills.errors",
    "SkillSpec": "skills.model",
    "SkillStore": "skills.store",
    "SkillVersionInfo": "skills.model",
    "SkillVersionNotFound": "skills.errors",
    "TooFrequent": "skills.errors",
    "TooManySchedules": "skills.errors",
    "UnknownTimezone": "skills.errors",
    "UnsafeSkillFile": "skills.errors",
    "agent_name": "skills.runnable",
    "check_name": "skills.model",
    "parse_arguments": "skills.model",
    "parse_markdown": "skills.markdown",
    "render_markdown": "skills.markdown",
    "render_prompt": "skills.model",
    "skill_bounds": "skills.runnable",
    "template_arguments": "skills.model",
    "to_runnable": "skills.runnable",
    "usable_tools": "skills.runnable",
    "validate_spec": "skills.model",
}

__all__ = [
    "ArgumentError",
    "InvalidCron",
    "InvalidSkill",
    "InvalidTime",
    "OverBudget",
    "ScheduleError",
    "ScheduleNotFound",
    "SkillDeleted",
    "SkillError",
    "SkillExists",
    "SkillFileError",
    "SkillInfo",
    "SkillNotFound",
    "SkillPermissionDenied",
    "SkillSpec",
    "SkillStore",
    "SkillVersionInfo",
    "SkillVersionNotFound",
    "TooFrequent",
    "TooManySchedules",
    "UnknownTimezone",
    "UnsafeSkillFile",
    "agent_name",
    "check_name",
    "parse_arguments",
    "parse_markdown",
    "render_markdown",
    "render_prompt",
    "skill_bounds",
    "template_arguments",
    "to_runnable",
    "usable_tools",
    "validate_spec",
]


__getattr__, __dir__ = _attach(__name__, _WHERE, globals())
