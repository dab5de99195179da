"""What the bot intends to do, as plain data.

Every feature decides first and acts second: a pure function returns a ``Plan`` (a list of these
actions) and ``bot.actions.apply`` is the one place that turns a plan into GitHub writes. Keeping the
plan as data lets dry runs, the audit log and tests read exactly what would happen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from bot.core import render
from bot.core.render import Safe


@dataclass(frozen=True)
class Comment:
    """Post a comment; with ``marker`` set, edit the bot's earlier comment carrying it instead.

    ``body`` must be ``render.Safe``: ``bot.actions`` refuses anything else."""

    issue: int
    body: Safe
    marker: str | None = None


@dataclass(frozen=True)
class AddLabels:
    issue: int
    labels: tuple[str, ...]


@dataclass(frozen=True)
class RemoveLabel:
    issue: int
    label: str


@dataclass(frozen=True)
class CreateLabel:
    """Create a repository label if it does not exist yet (e.g. ``needs-info``, ``digest``)."""

    name: str
    color: str = "ededed"
    description: str = ""


@dataclass(frozen=True)
class Close:
    """Close an issue; ``state_reason`` is ``completed``, ``not_planned`` or ``duplicate``."""

    issue: int
    state_reason: str = "not_planned"


@dataclass(frozen=True)
class Reopen:
    issue: int


@dataclass(frozen=True)
class Assign:
    issue: int
    assignees: tuple[str, ...]


@dataclass(frozen=True)
class Unassign:
    issue: int
    assignees: tuple[str, ...]


@dataclass(frozen=True)
class React:
    """React to a comment (``comment_id``) or, with ``comment_id=None``, to the issue itself."""

    issue: int
    content: str
    comment_id: int | None = None


@dataclass(frozen=True)
class CreateIssue:
    """Open a new issue; with ``marker`` set, update the bot's open issue carrying it instead.

    ``title`` and ``body`` must be ``render.Safe``."""

    title: Safe
    body: Safe
    labels: tuple[str, ...] = ()
    marker: str | None = None


@dataclass(frozen=True)
class EditIssueBody:
    issue: int
    body: Safe


Action = Union[Comment, AddLabels, RemoveLabel, CreateLabel, Close, Reopen, Assign, Unassign, React,
               CreateIssue, EditIssueBody]


@dataclass
class Plan:
    """An ordered list of actions plus a note of why, for logs and dry-run output."""

    actions: list[Action] = field(default_factory=list)
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, action: Action) -> "Plan":
        self.actions.append(action)
        return self

    def __bool__(self) -> bool:
        return bool(self.actions)


def marker(kind: str, key: str | int = "") -> Safe:
    """The hidden HTML comment that lets the bot find its own text again (see ``render.marker``)."""
    return render.marker(kind, key)
