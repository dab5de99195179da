"""When to re-ping, close, reopen or unlabel an issue: the needs-info and stale lifecycles.

This is the pure half of the sweep and of the lifecycle webhooks. It is written against the
complaints users keep filing about probot/no-response, probot/stale and actions/stale:

* stale bots close valid issues nobody has triaged -> by default only issues *waiting on their
  author* are ever closed (``only_waiting_on_author``);
* the bot's own comments, or other bots', count as activity -> only humans count here;
* exemptions are missing -> pinned/security/configured labels, milestones, projects, assignees and
  ``/freeze`` all exempt an issue;
* issues are closed as "completed" when nothing was done -> always ``state_reason: not_planned``;
* bots ping twice or post a second close comment after a crash -> every ping and close comment
  carries a hidden marker keyed by the time the label was added, and the thread is read for it first.

Time runs from the moment the label was added (the ``labeled`` event in the issue's timeline), not
from the issue's creation. Inputs are plain dicts shaped like GitHub REST objects (issue, timeline
events, issue comments); all datetimes are timezone-aware.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatchcase
from typing import Any

from bot.core import render
from bot.core.commands import parse as parse_commands
from bot.core.plan import AddLabels, Close, Comment, CreateLabel, Plan, Reopen, RemoveLabel, marker

PING_MARKER = "needs-info-ping"
CLOSE_MARKER = "needs-info-close"
STALE_MARKER = "stale"
STALE_CLOSE_MARKER = "stale-close"

# Templates for bot.core.render.fmt: {author} is render.mention, {label} render.code, numbers as is.
PING_MESSAGE = (
    "{author} a friendly reminder: this issue is waiting for the information asked for above. "
    "When you reply, the {label} label comes off and a maintainer will take another look. "
    "Without a reply in {close_after_days} days the issue will be closed as not planned; "
    "replying afterwards reopens it."
)
CLOSE_MESSAGE = (
    "Closing this as not planned because the information asked for has not arrived. "
    "{author} nothing is lost: just reply here with it and the issue reopens."
)
STALE_MESSAGE_CLOSE = (
    "This issue has waited on its author for {days} days without activity, so it is marked {label}. "
    "It will be closed as not planned in {close_days} days unless someone comments; any comment "
    "removes the label."
)
STALE_MESSAGE_LABEL_ONLY = (
    "This issue has waited on its author for {days} days without activity, so it is marked {label}. "
    "It stays open; any comment removes the label."
)
STALE_CLOSE_MESSAGE = (
    "Closing this as not planned after {days} days without activity. A comment is enough for a "
    "maintainer to reopen it."
)

# Timeline events that record no act by their actor ("mentioned": the actor is who was mentioned).
_PASSIVE_EVENTS = frozenset({"mentioned", "subscribed", "unsubscribed"})
_MARKER_PREFIX = "<!-- first-responder:"


@dataclass
class LifecycleDecision:
    """What to do with one issue now: ``kind`` is ``ping``, ``close``, ``remove_label``, ``reopen``,
    ``mark_stale`` or ``None`` (nothing due); ``reason`` says why, for the sweep's output and logs.

    A decision is truthy only when something is due, so ``if decision:`` reads like an Optional.
    """

    kind: str | None
    plan: Plan = field(default_factory=Plan)
    reason: str = ""

    def __bool__(self) -> bool:
        return self.kind is not None


def parse_time(value: str | datetime | None) -> datetime | None:
    """Read GitHub's ISO 8601 timestamps (``2024-05-01T12:00:00Z``); naive datetimes are taken as UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    """GitHub's timestamp format, used as the key of hidden markers."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _base_login(login: str | None) -> str:
    return re.sub(r"\[bot\]$", "", (login or "").strip().lstrip("@").lower())


def is_human(user: dict[str, Any] | None, bot_login: str) -> bool:
    """Whether a GitHub user object is a person: not ``type: Bot``, not an App login, not this bot."""
    if not user:
        return False
    login = user.get("login") or ""
    if user.get("type") == "Bot" or login.lower().endswith("[bot]"):
        return False
    return _base_login(login) != _base_login(bot_login)


def _is_bot_itself(user: dict[str, Any] | None, bot_login: str) -> bool:
    return bool(user) and _base_login(user.get("login")) == _base_login(bot_login)


def _author(issue: dict[str, Any]) -> str:
    return ((issue.get("user") or {}).get("login") or "")


def _has_label(issue: dict[str, Any], label: str) -> bool:
    return any((item.get("name") or "").lower() == label.lower() for item in issue.get("labels") or [])


def _event_actor(event: dict[str, Any]) -> dict[str, Any] | None:
    return event.get("actor") or event.get("user")


def label_added_at(timeline: list[dict[str, Any]], label: str) -> datetime | None:
    """When ``label`` was last added, from the ``labeled`` events of the timeline (or issue events)."""
    times = [
        parse_time(event.get("created_at"))
        for event in timeline
        if event.get("event") == "labeled" and ((event.get("label") or {}).get("name") or "").lower()
        == label.lower()
    ]
    times = [moment for moment in times if moment is not None]
    return max(times) if times else None


def _bot_close_events(timeline: list[dict[str, Any]], since: datetime, bot_login: str) -> list[dict[str, Any]]:
    """The bot's own ``closed`` events at or after ``since``: GitHub's record of what the bot closed.

    Unlike a close comment (which a maintainer may delete) or the audit log (which a restored database
    may lack), the issue's events always say who closed it.
    """
    found = []
    for event in timeline:
        created = parse_time(event.get("created_at"))
        if (event.get("event") == "closed" and created is not None and created >= since
                and _is_bot_itself(_event_actor(event), bot_login)):
            found.append(event)
    return found


def _last_closer_is_bot(timeline: list[dict[str, Any]], bot_login: str) -> bool | None:
    """Whether the issue's last ``closed`` event is the bot's; ``None`` when the timeline shows no close."""
    closes = [event for event in timeline if event.get("event") == "closed"]
    if not closes:
        return None
    last = max(closes, key=lambda event: parse_time(event.get("created_at")) or datetime.min.replace(
        tzinfo=timezone.utc))
    return _is_bot_itself(_event_actor(last), bot_login)


def _bot_marker_comments(comments: list[dict[str, Any]], kind: str, since: datetime,
                         bot_login: str, key: str) -> list[dict[str, Any]]:
    """The bot's comments carrying a ``kind`` marker for this waiting period.

    A comment counts if it carries the exact marker (same label time), or any marker of that kind
    posted since the label was added: either way the author was already told for this period.
    """
    exact = marker(kind, key)
    prefix = f"{_MARKER_PREFIX}{kind}"
    found = []
    for comment in comments:
        if not _is_bot_itself(comment.get("user"), bot_login):
            continue
        body = comment.get("body") or ""
        created = parse_time(comment.get("created_at"))
        if exact in body or (re.search(re.escape(prefix) + r"[: ]", body) and created and created >= since):
            found.append(comment)
    return found


def _human_comments(comments: list[dict[str, Any]], bot_login: str) -> list[dict[str, Any]]:
    human = [comment for comment in comments if is_human(comment.get("user"), bot_login)]
    return sorted(human, key=lambda comment: parse_time(comment.get("created_at")) or datetime.min.replace(
        tzinfo=timezone.utc))


def _author_replied_since(comments: list[dict[str, Any]], author: str, since: datetime,
                          bot_login: str) -> dict[str, Any] | None:
    """The original author's first comment after ``since`` (maintainers' comments are not theirs)."""
    for comment in _human_comments(comments, bot_login):
        created = parse_time(comment.get("created_at"))
        if created and created > since and (comment.get("user") or {}).get("login", "").lower() == author.lower():
            return comment
    return None


def _last_human_activity(issue: dict[str, Any], timeline: list[dict[str, Any]], comments: list[dict[str, Any]],
                         bot_login: str, ignore_label: str | None = None) -> datetime | None:
    """The latest thing a person did on the issue: opened it, commented, labeled, assigned, renamed...

    ``updated_at`` cannot be used: the bot's own writes move it too. Adding or removing
    ``ignore_label`` (the stale label) is not activity, or marking an issue stale would un-stale it.
    """
    moments: list[datetime] = []
    if is_human(issue.get("user"), bot_login):
        created = parse_time(issue.get("created_at"))
        if created:
            moments.append(created)
    for comment in comments:
        if is_human(comment.get("user"), bot_login):
            created = parse_time(comment.get("created_at"))
            if created:
                moments.append(created)
    for event in timeline:
        if event.get("event") in _PASSIVE_EVENTS or not is_human(_event_actor(event), bot_login):
            continue
        if ignore_label and event.get("event") in ("labeled", "unlabeled") and (
                (event.get("label") or {}).get("name") or "").lower() == ignore_label.lower():
            continue
        created = parse_time(event.get("created_at"))
        if created:
            moments.append(created)
    return max(moments) if moments else None


def asks_author(body: str, author: str) -> bool:
    """Whether a comment asks something of the author: a question mark, or an ``@author`` mention.

    Quoted lines and code are left out: a quoted question is the author's own, a ``?`` in a log is
    not a question.
    """
    text = re.sub(r"(?ms)^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", "", body or "")
    text = re.sub(r"`[^`\n]*`", "", text)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(">")]
    text = "\n".join(lines)
    if "?" in text:
        return True
    return bool(author) and re.search(rf"(?<![\w-])@{re.escape(author)}(?![\w-])", text, re.IGNORECASE) is not None


def waiting_on_author(issue: dict[str, Any], comments: list[dict[str, Any]], *, write_logins: set[str],
                      bot_login: str) -> bool:
    """Whether the ball is in the author's court.

    Among human comments by the author or by people with write access, the last one must come from
    someone with write access (not the author) and ask something of the author. No such comment
    means nobody has triaged the issue yet: it waits on maintainers and is never stale-closed.
    Third parties' "+1"s are activity but do not change whose turn it is.
    """
    author = _author(issue).lower()
    writers = {login.lower() for login in write_logins}
    relevant = [
        comment for comment in _human_comments(comments, bot_login)
        if (comment.get("user") or {}).get("login", "").lower() in writers | {author}
    ]
    if not relevant:
        return False
    last = relevant[-1]
    login = (last.get("user") or {}).get("login", "").lower()
    return login in writers and login != author and asks_author(last.get("body") or "", _author(issue))


def freeze_commands(comments: list[dict[str, Any]], bot_login: str) -> list[tuple[str, bool, datetime]]:
    """Every ``/freeze`` (True) and ``/unfreeze`` (False) in people's comments: (login, on, when), in order.

    The thread keeps these when the database does not (a restore from an older backup loses the flag
    that ``/freeze`` set), so the sweep reads them as a second source of the same fact.
    """
    found = []
    for comment in _human_comments(comments, bot_login):
        created = parse_time(comment.get("created_at"))
        login = (comment.get("user") or {}).get("login") or ""
        for command in parse_commands(comment.get("body") or "", bot_login):
            if command.name in ("freeze", "unfreeze") and created is not None and login:
                found.append((login, command.name == "freeze", created))
    return found


def frozen_in_thread(commands: list[tuple[str, bool, datetime]], write_logins: set[str]) -> bool:
    """Whether the last ``/freeze`` or ``/unfreeze`` by someone with write access was ``/freeze``."""
    writers = {login.lower() for login in write_logins}
    state = False
    for login, on, _when in sorted(commands, key=lambda entry: entry[2]):
        if login.lower() in writers:
            state = on
    return state


def stale_exemption(issue: dict[str, Any], stale_config: dict[str, Any], *, frozen: bool) -> str | None:
    """Why this issue may never go stale, or ``None``: frozen, exempt label, milestone, project, assignee."""
    if frozen:
        return "frozen with /freeze"
    for label in issue.get("labels") or []:
        name = (label.get("name") or "").lower()
        if any(fnmatchcase(name, str(pattern).lower()) for pattern in stale_config.get("exempt_labels") or []):
            return f"exempt label {label.get('name')!r}"
    if stale_config.get("exempt_milestones", True) and issue.get("milestone"):
        return "has a milestone"
    if stale_config.get("exempt_projects", True) and issue.get("in_project"):
        return "is in a project"
    if stale_config.get("exempt_assignees", True) and (issue.get("assignees") or issue.get("assignee")):
        return "has assignees"
    return None


def _nothing(reason: str) -> LifecycleDecision:
    return LifecycleDecision(None, Plan(reason=reason), reason)


def _decision(kind: str, reason: str, *actions: Any) -> LifecycleDecision:
    plan = Plan(actions=list(actions), reason=reason, data={"lifecycle": kind})
    return LifecycleDecision(kind, plan, reason)


@dataclass(frozen=True)
class _NeedsInfoState:
    """Where an issue stands in its needs-info waiting period."""

    label: str
    labeled_at: datetime
    key: str
    ping: dict[str, Any] | None
    ping_at: datetime | None
    closed_by_bot: dict[str, Any] | None


def _needs_info_state(issue: dict[str, Any], timeline: list[dict[str, Any]], comments: list[dict[str, Any]],
                      config: dict[str, Any], bot_login: str) -> _NeedsInfoState | None:
    settings = config.get("needs_info") or {}
    label = settings.get("label", "needs-info")
    if not settings.get("enabled", True) or not _has_label(issue, label):
        return None
    # Without a labeled event (a truncated timeline) the issue's creation is the earliest safe bound.
    labeled_at = label_added_at(timeline, label) or parse_time(issue.get("created_at"))
    if labeled_at is None:
        return None
    key = iso(labeled_at)
    pings = _bot_marker_comments(comments, PING_MARKER, labeled_at, bot_login, key)
    ping = min(pings, key=lambda comment: parse_time(comment.get("created_at"))) if pings else None
    # The close comment or, should it be gone, the close event: either says the bot closed it already.
    closes = (_bot_marker_comments(comments, CLOSE_MARKER, labeled_at, bot_login, key)
              or _bot_close_events(timeline, labeled_at, bot_login))
    return _NeedsInfoState(
        label=label,
        labeled_at=labeled_at,
        key=key,
        ping=ping,
        ping_at=parse_time(ping.get("created_at")) if ping else None,
        closed_by_bot=closes[0] if closes else None,
    )


def next_needs_info_step(issue: dict[str, Any], timeline: list[dict[str, Any]], comments: list[dict[str, Any]],
                         config: dict[str, Any], *, bot_login: str) -> tuple[str, datetime] | None:
    """The next needs-info step and when it is due (``("ping", t)`` or ``("close", t)``), for the digest."""
    if issue.get("state", "open") != "open":
        return None
    state = _needs_info_state(issue, timeline, comments, config, bot_login)
    if state is None or state.closed_by_bot is not None:
        return None
    if _author_replied_since(comments, _author(issue), state.labeled_at, bot_login) is not None:
        return None  # the author answered: the sweep takes the label off, nobody waits on them
    settings = config.get("needs_info") or {}
    if state.ping_at is None:
        return "ping", state.labeled_at + timedelta(days=settings.get("ping_after_days", 7))
    return "close", state.ping_at + timedelta(days=settings.get("close_after_days", 7))


def _needs_info_due(issue: dict[str, Any], timeline: list[dict[str, Any]], comments: list[dict[str, Any]],
                    now: datetime, config: dict[str, Any], frozen: bool,
                    bot_login: str) -> LifecycleDecision | None:
    """The needs-info lifecycle; ``None`` when the issue is not in it."""
    state = _needs_info_state(issue, timeline, comments, config, bot_login)
    if state is None:
        return None
    settings = config.get("needs_info") or {}
    number = int(issue["number"])
    author = _author(issue)
    is_open = issue.get("state", "open") == "open"

    if not is_open:
        # The bot closed it for lack of information; an answer after that reopens it (like no-response).
        # Who closed it last is in the events; a close comment alone cannot tell a later close by a person.
        last_closer_is_bot = _last_closer_is_bot(timeline, bot_login)
        if state.closed_by_bot is None or last_closer_is_bot is False:
            return _nothing("closed by a person; the bot leaves it")
        closed_at = parse_time(issue.get("closed_at")) or parse_time(state.closed_by_bot.get("created_at"))
        reply = _author_replied_since(comments, author, closed_at or state.labeled_at, bot_login)
        if reply is None:
            return _nothing("closed for missing information; no reply from the author since")
        return _decision("reopen", "the author replied after the bot closed the issue",
                         RemoveLabel(number, state.label), Reopen(number))

    if _author_replied_since(comments, author, state.labeled_at, bot_login) is not None:
        return _decision("remove_label", f"the author replied after {state.label} was added",
                         RemoveLabel(number, state.label))
    if state.closed_by_bot is not None:
        # A person reopened it without the author answering: never a second close comment.
        return _nothing("already closed once in this waiting period and reopened by a person")
    ping_after = timedelta(days=settings.get("ping_after_days", 7))
    close_after = timedelta(days=settings.get("close_after_days", 7))
    if state.ping_at is None:
        if now < state.labeled_at + ping_after:
            return _nothing(f"ping due at {iso(state.labeled_at + ping_after)}")
        body = render.fmt(PING_MESSAGE, author=render.mention(author), label=render.code(state.label),
                          close_after_days=int(settings.get("close_after_days", 7)))
        return _decision("ping", f"no reply from the author {settings.get('ping_after_days', 7)} days after "
                         f"{state.label} was added",
                         Comment(number, body, marker=marker(PING_MARKER, state.key)))
    if frozen:
        return _nothing("frozen with /freeze: never closed")
    if now < state.ping_at + close_after:
        return _nothing(f"close due at {iso(state.ping_at + close_after)}")
    return _decision("close", f"no reply from the author {settings.get('close_after_days', 7)} days after the ping",
                     Comment(number, render.fmt(CLOSE_MESSAGE, author=render.mention(author)),
                             marker=marker(CLOSE_MARKER, state.key)),
                     Close(number, "not_planned"))


def _stale_due(issue: dict[str, Any], timeline: list[dict[str, Any]], comments: list[dict[str, Any]],
               now: datetime, config: dict[str, Any], write_logins: set[str], frozen: bool,
               bot_login: str) -> LifecycleDecision:
    """The stale lifecycle for an open issue outside needs-info."""
    settings = config.get("stale") or {}
    label = settings.get("label", "stale")
    number = int(issue["number"])
    labeled = _has_label(issue, label)
    exemption = stale_exemption(issue, settings, frozen=frozen)
    if exemption:
        if labeled:
            return _decision("remove_label", f"exempt ({exemption}) but labeled {label}", RemoveLabel(number, label))
        return _nothing(f"exempt: {exemption}")
    last_activity = _last_human_activity(issue, timeline, comments, bot_login, ignore_label=label)
    waiting = waiting_on_author(issue, comments, write_logins=write_logins, bot_login=bot_login)
    only_waiting = settings.get("only_waiting_on_author", True)
    days_until_stale = settings.get("days_until_stale", 60)
    days_until_close = settings.get("days_until_close", 14)

    if not labeled:
        if only_waiting and not waiting:
            return _nothing("waiting on maintainers, not on the author")
        if last_activity is None or now < last_activity + timedelta(days=days_until_stale):
            return _nothing(f"human activity within {days_until_stale} days")
        message = STALE_MESSAGE_CLOSE if settings.get("close", True) else STALE_MESSAGE_LABEL_ONLY
        body = render.fmt(message, days=int(days_until_stale), label=render.code(label),
                          close_days=int(days_until_close))
        return _decision(
            "mark_stale", f"no human activity for {days_until_stale} days",
            CreateLabel(label, "ededed", "No activity for a while; a comment removes this"),
            AddLabels(number, (label,)),
            Comment(number, body, marker=marker(STALE_MARKER, iso(last_activity))),
        )

    stale_at = label_added_at(timeline, label)
    if stale_at is None:
        marks = _bot_marker_comments(comments, STALE_MARKER, datetime.min.replace(tzinfo=timezone.utc),
                                     bot_login, "")
        stale_at = max((parse_time(comment.get("created_at")) for comment in marks), default=None)
    if stale_at is None:
        return _nothing(f"labeled {label} but when is unknown; not closing")
    if last_activity is not None and last_activity > stale_at:
        return _decision("remove_label", f"human activity after the {label} label", RemoveLabel(number, label))
    if not settings.get("close", True):
        return _nothing("stale.close is off: label only")
    if only_waiting and not waiting:
        return _nothing("waiting on maintainers, not on the author: not closing")
    if (_bot_marker_comments(comments, STALE_CLOSE_MARKER, stale_at, bot_login, iso(stale_at))
            or _bot_close_events(timeline, stale_at, bot_login)):
        return _nothing("already closed once in this stale period and reopened")
    if now < stale_at + timedelta(days=days_until_close):
        return _nothing(f"close due at {iso(stale_at + timedelta(days=days_until_close))}")
    total_days = days_until_stale + days_until_close
    return _decision(
        "close", f"stale for {days_until_close} days with no human activity",
        Comment(number, render.fmt(STALE_CLOSE_MESSAGE, days=int(total_days)),
                marker=marker(STALE_CLOSE_MARKER, iso(stale_at))),
        Close(number, "not_planned"),
    )


def due(issue: dict[str, Any], timeline: list[dict[str, Any]], comments: list[dict[str, Any]], now: datetime,
        config: dict[str, Any], *, write_logins: set[str], frozen: bool, bot_login: str) -> LifecycleDecision:
    """What the sweep should do with ``issue`` now (``config`` is the ``lifecycle`` section).

    needs-info: the author's reply after the label was added removes it; otherwise one ping after
    ``ping_after_days`` and, ``close_after_days`` after the ping, one close as not planned with a comment
    saying that a reply reopens it; a bot-closed issue the author answered is reopened. stale (off by
    default): see ``_stale_due``. Only human activity counts. The decision's kind is ``None`` when
    nothing is due; its plan's actions are all the writes.
    """
    if issue.get("pull_request"):
        return _nothing("pull requests are not swept")
    needs_info = _needs_info_due(issue, timeline, comments, now, config, frozen, bot_login)
    if needs_info is not None:
        return needs_info
    if issue.get("state", "open") != "open":
        return _nothing("closed")
    if not (config.get("stale") or {}).get("enabled", False):
        return _nothing("not waiting for information; stale is off")
    return _stale_due(issue, timeline, comments, now, config, write_logins, frozen, bot_login)


def _meaningful_edit(old_body: str, new_body: str) -> bool:
    """An edit adds information when the text changed beyond whitespace and ticked checkboxes."""

    def normalise(text: str) -> str:
        text = re.sub(r"\[[xX ]\]", "[]", text or "")
        return " ".join(text.split())

    return normalise(old_body) != normalise(new_body)


def on_author_activity(issue: dict[str, Any], actor: dict[str, Any], config: dict[str, Any], *,
                       bot_login: str, bot_closed: bool, old_body: str | None = None) -> LifecycleDecision:
    """React at once to a comment or an issue-body edit (``old_body`` set for edits), from webhooks.

    The original author's comment, or an edit of the body that changes its content, ends needs-info:
    the label comes off and, if the bot had closed the issue, it is reopened. Any human's comment
    removes the stale label (when stale is enabled). Bots, including this one, change nothing.
    """
    if not is_human(actor, bot_login):
        return _nothing("not a person")
    number = int(issue["number"])
    actions: list[Any] = []
    reasons: list[str] = []
    kind: str | None = None
    is_author = (actor.get("login") or "").lower() == _author(issue).lower()
    settings = config.get("needs_info") or {}
    label = settings.get("label", "needs-info")
    if settings.get("enabled", True) and is_author and _has_label(issue, label):
        if old_body is not None and not _meaningful_edit(old_body, issue.get("body") or ""):
            reasons.append("the author's edit changed no content")
        else:
            actions.append(RemoveLabel(number, label))
            kind = "remove_label"
            reasons.append("the author " + ("edited the issue" if old_body is not None else "replied"))
            if issue.get("state") == "closed" and bot_closed:
                actions.append(Reopen(number))
                kind = "reopen"
                reasons.append("the bot had closed it")
    stale = config.get("stale") or {}
    stale_label = stale.get("label", "stale")
    if stale.get("enabled", False) and issue.get("state", "open") == "open" and _has_label(issue, stale_label):
        actions.append(RemoveLabel(number, stale_label))
        kind = kind or "remove_label"
        reasons.append(f"human activity removes {stale_label}")
    if kind is None:
        return _nothing("; ".join(reasons) or "nothing waits on this activity")
    return _decision(kind, "; ".join(reasons), *actions)
