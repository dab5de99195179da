"""The weekly digest, as pure functions: which week, what counts, which issues rank top, the markdown.

probot/weekly-digest lists issues by reactions and comments; maintainers asked for more than that:
where the tracker stands (opened, closed by *why*, still open, change from last week), which open
issues matter most by a score they can read, who is waiting on whom, and a chart they can look at
rather than read. Everything here works on plain dicts shaped like GitHub REST issues, so the
scheduler, the CLI and ``/digest`` produce the same text, and a test can pin it.

The score (``score``) is documented and shown in the digest, part by part:

* reactions: 2 per 👍 or ❤️, 1 per 🎉 🚀 😄 👀, 0.5 per 👎 or 😕 (a 👎 is still attention, but less
  of a signal that people want the issue solved);
* discussion: 1.5 per distinct human commenter (the issue's ``commenters``; without it, its
  ``comments`` count stands in);
* recency: up to 10 points, halving every 14 days since the last activity (``last_activity_at`` when
  the caller knows it, else ``updated_at``);
* age: 0.5 per 30 days open, at most 6: a long-standing, much-wanted issue should not sink.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from bot.core import render as rendering  # the module; ``render`` below is the digest's function
from bot.core.lifecycle import parse_time
from bot.core.plan import marker
from bot.core.render import Safe

REACTION_WEIGHTS: dict[str, float] = {
    "+1": 2.0,
    "heart": 2.0,
    "hooray": 1.0,
    "rocket": 1.0,
    "laugh": 1.0,
    "eyes": 1.0,
    "-1": 0.5,
    "confused": 0.5,
}
COMMENTER_POINTS = 1.5
RECENCY_POINTS = 10.0
RECENCY_HALF_LIFE_DAYS = 14.0
AGE_POINTS_PER_30_DAYS = 0.5
AGE_POINTS_MAX = 6.0
CHART_DAYS = 56

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_REACTION_EMOJI = {"+1": "👍", "heart": "❤️", "hooray": "🎉", "rocket": "🚀", "laugh": "😄", "eyes": "👀",
                   "-1": "👎", "confused": "😕"}


_time = parse_time  # GitHub's ISO 8601 timestamps; one parser for every core module


@dataclass(frozen=True)
class ScoreParts:
    """An issue's score, part by part, so the digest can show why it ranks where it does."""

    reactions: float
    commenters: float
    recency: float
    age: float

    @property
    def total(self) -> float:
        """The sum of the parts, rounded to two decimals."""
        return round(self.reactions + self.commenters + self.recency + self.age, 2)


def _distinct_commenters(issue: Mapping[str, Any]) -> int:
    commenters = issue.get("commenters")
    if commenters is None:
        return int(issue.get("comments") or 0)
    if isinstance(commenters, int):
        return commenters
    return len({str(login).lower() for login in commenters})


def score(issue: Mapping[str, Any], now: datetime) -> ScoreParts:
    """Score an open issue by the documented formula (module docstring); ``now`` is timezone-aware."""
    reactions = issue.get("reactions") or {}
    reaction_points = sum(weight * int(reactions.get(name) or 0) for name, weight in REACTION_WEIGHTS.items())
    commenter_points = COMMENTER_POINTS * _distinct_commenters(issue)
    created = _time(issue.get("created_at")) or now
    active = _time(issue.get("last_activity_at")) or _time(issue.get("updated_at")) or created
    idle_days = max((now - active).total_seconds() / 86400, 0.0)
    recency = RECENCY_POINTS * math.pow(0.5, idle_days / RECENCY_HALF_LIFE_DAYS)
    age_days = max((now - created).total_seconds() / 86400, 0.0)
    age = min(AGE_POINTS_PER_30_DAYS * age_days / 30, AGE_POINTS_MAX)
    return ScoreParts(round(reaction_points, 2), round(commenter_points, 2), round(recency, 2), round(age, 2))


def _label_names(issue: Mapping[str, Any]) -> list[str]:
    return [label.get("name", "") for label in issue.get("labels") or []]


def _is_open_issue(issue: Mapping[str, Any]) -> bool:
    return issue.get("state", "open") == "open" and not issue.get("pull_request")


def rank(issues: Iterable[Mapping[str, Any]], now: datetime, *, top: int | None = None,
         exclude_labels: Iterable[str] = ()) -> list[tuple[Mapping[str, Any], ScoreParts]]:
    """Open issues (not pull requests, none with an excluded label) as ``(issue, parts)``, best first.

    Ties go to more reaction points, then the older issue (lower number), so the order is stable.
    """
    excluded = {label.lower() for label in exclude_labels}
    scored = [
        (issue, score(issue, now))
        for issue in issues
        if _is_open_issue(issue) and not excluded & {name.lower() for name in _label_names(issue)}
    ]
    scored.sort(key=lambda pair: (-pair[1].total, -pair[1].reactions, int(pair[0]["number"])))
    return scored[:top] if top is not None else scored


def _zone(tz: str | ZoneInfo | timezone) -> ZoneInfo | timezone:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def week_bounds(week: str | date | datetime, day: str = "monday", hour: int = 9,
                tz: str | ZoneInfo | timezone = "UTC") -> tuple[datetime, datetime]:
    """The digest window ``(start, end)`` for an ISO week, as aware datetimes in ``tz``.

    A window ends on the configured ``day`` at ``hour`` (local time in ``tz``) and starts at the same
    wall-clock time seven days earlier. The window named ``YYYY-Www`` is the one that lies mostly in
    that ISO week (its middle falls in it): with the default Monday 09:00, ``2024-W10`` runs from
    Monday 4 March 09:00 to Monday 11 March 09:00. A ``date`` means its ISO week; an aware
    ``datetime`` means the ISO week of its local date in ``tz``.
    """
    zone = _zone(tz)
    if isinstance(week, datetime):
        local = week.astimezone(zone) if week.tzinfo else week
        year, number, _ = local.date().isocalendar()
    elif isinstance(week, date):
        year, number, _ = week.isocalendar()
    else:
        text = week.strip().upper()
        if len(text) != 8 or text[4:6] != "-W" or not (text[:4] + text[6:]).isdigit():
            raise ValueError(f"week must look like 2024-W05, got {week!r}")
        year, number = int(text[:4]), int(text[6:])
    weekday = DAYS.index(day.lower())
    monday = date.fromisocalendar(year, number, 1)
    # The end lies in [Thursday 12:00 of this week, Thursday 12:00 of next week): exactly one match.
    for offset in range(3, 11):
        candidate = monday + timedelta(days=offset)
        if candidate.weekday() != weekday:
            continue
        end = datetime.combine(candidate, time(hour), tzinfo=zone)
        middle = datetime.combine(candidate, time(hour)) - timedelta(days=3, hours=12)
        if middle.isocalendar()[:2] == (year, number):
            return datetime.combine(candidate - timedelta(days=7), time(hour), tzinfo=zone), end
    raise AssertionError("unreachable: one weekday in any 8 consecutive days")


def week_label(start: datetime, end: datetime) -> str:
    """``YYYY-Www`` of a window: the ISO week holding its middle."""
    middle = start + (end - start) / 2
    year, number, _ = middle.replace(tzinfo=None).isocalendar()
    return f"{year}-W{number:02d}"


def latest_week(now: datetime, day: str = "monday", hour: int = 9,
                tz: str | ZoneInfo | timezone = "UTC") -> str:
    """The newest week whose window has ended at ``now``: what the scheduler should post."""
    zone = _zone(tz)
    local = now.astimezone(zone)
    for back in range(0, 3):
        label = "{}-W{:02d}".format(*(local.date() - timedelta(days=7 * back)).isocalendar()[:2])
        start, end = week_bounds(label, day, hour, zone)
        if end <= now:
            return label
    raise AssertionError("unreachable: a window ends at least every seven days")


def title(start: datetime, end: datetime) -> Safe:
    """The digest issue's title: ``Weekly digest: <start date> – <end date>``."""
    return rendering.title(f"Weekly digest: {start.date().isoformat()} – {end.date().isoformat()}")


@dataclass(frozen=True)
class Counts:
    """Issues opened and closed in a window (closed split by ``state_reason``), and still open at its end.

    ``previous`` holds the same numbers for the week before, for the "change" column.
    """

    opened: int
    closed_completed: int
    closed_not_planned: int
    closed_duplicate: int
    still_open: int
    previous: "Counts | None" = None

    @property
    def closed(self) -> int:
        """All issues closed in the window, whatever the reason."""
        return self.closed_completed + self.closed_not_planned + self.closed_duplicate


def _window_counts(issues: list[Mapping[str, Any]], start: datetime, end: datetime) -> Counts:
    opened = completed = not_planned = duplicate = still_open = 0
    for issue in issues:
        created = _time(issue.get("created_at"))
        closed = _time(issue.get("closed_at")) if issue.get("state") == "closed" else None
        if created and start <= created < end:
            opened += 1
        if closed and start <= closed < end:
            reason = issue.get("state_reason") or "completed"  # GitHub's default when none is given
            if reason == "not_planned":
                not_planned += 1
            elif reason == "duplicate":
                duplicate += 1
            else:
                completed += 1
        if created and created < end and (closed is None or closed >= end):
            still_open += 1
    return Counts(opened, completed, not_planned, duplicate, still_open)


def _countable(issues: Iterable[Mapping[str, Any]], exclude_labels: Iterable[str]) -> list[Mapping[str, Any]]:
    """Issues, not pull requests, and none with an excluded label (such as the digests themselves)."""
    excluded = {label.lower() for label in exclude_labels}
    return [
        issue for issue in issues
        if not issue.get("pull_request") and not excluded & {name.lower() for name in _label_names(issue)}
    ]


def counts(issues: Iterable[Mapping[str, Any]], start: datetime, end: datetime, *,
           exclude_labels: Iterable[str] = ()) -> Counts:
    """Count the window ``[start, end)`` and, in ``previous``, the window of the same length before it.

    Pull requests and issues with an excluded label (pass the digest label) are left out. "Still
    open" is judged from each issue's current state, so an issue closed and reopened since counts as
    open. A closed issue without ``state_reason`` counts as completed, as GitHub shows it.
    """
    issue_list = _countable(issues, exclude_labels)
    current = _window_counts(issue_list, start, end)
    previous = _window_counts(issue_list, start - (end - start), start)
    return Counts(current.opened, current.closed_completed, current.closed_not_planned, current.closed_duplicate,
                  current.still_open, previous)


def daily_opened_closed(issues: Iterable[Mapping[str, Any]], end: datetime, days: int = CHART_DAYS,
                        tz: str | ZoneInfo | timezone = "UTC", *,
                        exclude_labels: Iterable[str] = ()) -> list[tuple[date, int, int]]:
    """Issues opened and closed per local day, ``(day, opened, closed)``, for the ``days`` whole days
    before the day ``end`` falls on (a window ending Monday 09:00 charts up to Sunday)."""
    zone = _zone(tz)
    last = end.astimezone(zone).date() - timedelta(days=1)
    first = last - timedelta(days=days - 1)
    opened = {first + timedelta(days=offset): 0 for offset in range(days)}
    closed = dict(opened)
    for issue in _countable(issues, exclude_labels):
        created = _time(issue.get("created_at"))
        if created and created.astimezone(zone).date() in opened:
            opened[created.astimezone(zone).date()] += 1
        closed_at = _time(issue.get("closed_at")) if issue.get("state") == "closed" else None
        if closed_at and closed_at.astimezone(zone).date() in closed:
            closed[closed_at.astimezone(zone).date()] += 1
    return [(day, opened[day], closed[day]) for day in opened]


def needs_maintainer(issues: Iterable[Mapping[str, Any]], comments_by_issue: Mapping[int, list[Mapping[str, Any]]],
                     write_logins: set[str], *, exclude_labels: Iterable[str] = ()) -> list[Mapping[str, Any]]:
    """Open issues nobody with write access has answered yet, oldest first.

    Issues opened by someone with write access or by a bot (such as earlier digests) are not waiting.
    """
    writers = {login.lower() for login in write_logins}
    excluded = {label.lower() for label in exclude_labels}
    waiting = []
    for issue in issues:
        if not _is_open_issue(issue) or excluded & {name.lower() for name in _label_names(issue)}:
            continue
        author = issue.get("user") or {}
        if author.get("type") == "Bot" or (author.get("login") or "").lower() in writers:
            continue
        comments = comments_by_issue.get(int(issue["number"]), [])
        if any(((comment.get("user") or {}).get("login") or "").lower() in writers for comment in comments):
            continue
        waiting.append(issue)
    return sorted(waiting, key=lambda issue: (_time(issue.get("created_at")) or datetime.max.replace(
        tzinfo=timezone.utc), int(issue["number"])))


def _escape(text: str) -> Safe:
    """Untrusted text (a title, a model's summary) for a table cell or list item: escaped plain text
    on one line (``rendering.line``): ``|`` and Markdown inert, ``@name`` and links ping and link nothing."""
    return rendering.line(text, 300, table=True)


def _link(repo: str, issue: Mapping[str, Any]) -> Safe:
    """``[#N](https://github.com/OWNER/REPO/issues/N)``, built from the number (never the payload's URL)."""
    return rendering.issue_link(repo, int(issue["number"]))


def _change(now: int, before: int | None) -> Safe:
    if before is None:
        return rendering.EMPTY
    delta = now - before
    return rendering.fmt("±0") if delta == 0 else rendering.fmt("{delta:+d}", delta=delta)


def _reaction_summary(issue: Mapping[str, Any]) -> Safe:
    reactions = issue.get("reactions") or {}
    parts = [rendering.fmt(_REACTION_EMOJI[name] + " {count}", count=int(reactions.get(name) or 0))
             for name in REACTION_WEIGHTS if int(reactions.get(name) or 0)]
    return rendering.join(" ", parts) or rendering.fmt("–")


def _number(value: float) -> Safe:
    return rendering.text(f"{value:g}" if value == int(value) else f"{value:.2f}".rstrip("0"))


def mermaid_chart(daily: list[tuple[date, int, int]]) -> Safe:
    """A Mermaid ``xychart-beta`` block: bars for issues opened per day, a line for issues closed."""
    labels = ", ".join(f'"{day.strftime("%m-%d")}"' for day, _, _ in daily)
    opened = ", ".join(str(count) for _, count, _ in daily)
    closed = ", ".join(str(count) for _, _, count in daily)
    top = max([1] + [max(opened_count, closed_count) for _, opened_count, closed_count in daily])
    return rendering.code_block("\n".join([
        "xychart-beta",
        '    title "Issues opened (bars) and closed (line) per day"',
        f"    x-axis [{labels}]",
        f'    y-axis "Issues" 0 --> {top}',
        f"    bar [{opened}]",
        f"    line [{closed}]",
    ]), lang="mermaid")


def render(repo: str, week: str, counts: Counts, top: list[tuple[Mapping[str, Any], ScoreParts]],
           needs_maintainer: list[Mapping[str, Any]], waiting_on_authors: list[tuple[Mapping[str, Any], str, datetime]],
           duplicates: list[tuple[int, int]], daily_opened_closed: list[tuple[date, int, int]], *,
           bounds: tuple[datetime, datetime] | None = None) -> Safe:
    """The digest issue's markdown for ``repo`` and ``week`` (``YYYY-Www``), with its hidden marker.

    ``top`` comes from ``rank``; an issue's one-line ``summary`` key (from the model cascade) is shown
    when present. ``waiting_on_authors`` holds ``(issue, next step, when)`` from
    ``lifecycle.next_needs_info_step``; ``duplicates`` holds ``(issue, probably duplicate of)`` numbers
    found this week; ``daily_opened_closed`` is the 8-week series for the chart. Titles, summaries and
    label names are rendered by ``bot.core.render`` (inert text, code spans); the digest mentions nobody.
    """
    fmt, text = rendering.fmt, rendering.text
    previous = counts.previous
    lines: list[Safe] = [marker("digest", week), rendering.EMPTY]
    if bounds is not None:
        lines.append(fmt("# Weekly digest for {repo}: {week} ({start} – {end} {zone})", repo=text(repo),
                         week=text(week), start=text(f"{bounds[0]:%Y-%m-%d %H:%M}"),
                         end=text(f"{bounds[1]:%Y-%m-%d %H:%M}"), zone=text(bounds[1].tzname() or "UTC")))
    else:
        lines.append(fmt("# Weekly digest for {repo}: {week}", repo=text(repo), week=text(week)))
    lines += [rendering.EMPTY, fmt("## Counts"), rendering.EMPTY, fmt("| | this week | change from the week before |"),
              fmt("|---|---:|---:|")]
    rows = [
        ("Opened", counts.opened, previous.opened if previous else None),
        ("Closed as completed", counts.closed_completed, previous.closed_completed if previous else None),
        ("Closed as not planned", counts.closed_not_planned, previous.closed_not_planned if previous else None),
        ("Closed as duplicate", counts.closed_duplicate, previous.closed_duplicate if previous else None),
        ("Still open", counts.still_open, previous.still_open if previous else None),
    ]
    lines += [fmt("| " + name + " | {value} | {change} |", value=int(value), change=_change(value, before))
              for name, value, before in rows]

    lines += [rendering.EMPTY, fmt("## Top issues ({count})", count=len(top)), rendering.EMPTY]
    if top:
        lines += [
            fmt("Score = reactions (👍 ❤️ 2, 🎉 🚀 😄 👀 1, 👎 😕 0.5) + 1.5 per commenter + recent activity (up to 10) "
                "+ age (up to 6)."),
            rendering.EMPTY,
            fmt("| # | issue | labels | score | reactions | discussion | recent | age |"),
            fmt("|---:|---|---|---:|---|---:|---:|---:|"),
        ]
        for place, (issue, parts) in enumerate(top, start=1):
            labels = rendering.join(", ", [rendering.code(name, table=True) for name in _label_names(issue)]) \
                or fmt("–")
            summary = issue.get("summary")
            cell = fmt("{link} {title}", link=_link(repo, issue), title=_escape(issue.get("title", "")))
            if summary:
                cell = fmt("{cell} — {summary}", cell=cell, summary=_escape(summary))
            lines.append(fmt(
                "| {place} | {cell} | {labels} | {total} | {reactions} ({reaction_score}) | {commenters} | {recency} "
                "| {age} |", place=place, cell=cell, labels=labels, total=_number(parts.total),
                reactions=_reaction_summary(issue), reaction_score=_number(parts.reactions),
                commenters=_number(parts.commenters), recency=_number(parts.recency), age=_number(parts.age)))
    else:
        lines.append(fmt("No open issues."))

    lines += [rendering.EMPTY, fmt("## Needs a maintainer ({count})", count=len(needs_maintainer)), rendering.EMPTY]
    if needs_maintainer:
        lines.append(fmt("Open issues with no reply from anyone with write access, oldest first."))
        lines.append(rendering.EMPTY)
        ordered = sorted(needs_maintainer, key=lambda issue: (str(issue.get("created_at") or ""), int(issue["number"])))
        for issue in ordered:
            opened = (_time(issue.get("created_at")) or datetime.min.replace(tzinfo=timezone.utc)).date()
            lines.append(fmt("- {link} {title} (opened {opened})", link=_link(repo, issue),
                             title=_escape(issue.get("title", "")), opened=text(opened.isoformat())))
    else:
        lines.append(fmt("Every open issue has an answer from a maintainer."))

    lines += [rendering.EMPTY, fmt("## Waiting on authors ({count})", count=len(waiting_on_authors)), rendering.EMPTY]
    if waiting_on_authors:
        for issue, step, when in sorted(waiting_on_authors, key=lambda item: (item[2], int(item[0]["number"]))):
            verb = "ping" if step == "ping" else "close"
            lines.append(fmt("- {link} {title}: " + verb + " on {when}", link=_link(repo, issue),
                             title=_escape(issue.get("title", "")),
                             when=text(f"{when.astimezone(timezone.utc):%Y-%m-%d}")))
    else:
        lines.append(fmt("Nobody is being waited on."))

    if duplicates:
        lines += [rendering.EMPTY, fmt("## Possible duplicates ({count})", count=len(duplicates)), rendering.EMPTY]
        lines += [fmt("- {issue} may duplicate {original}", issue=rendering.issue_ref(issue),
                      original=rendering.issue_ref(original)) for issue, original in duplicates]

    lines += [rendering.EMPTY, fmt("## Opened and closed per day, last {weeks} weeks", weeks=len(daily_opened_closed) // 7),
              rendering.EMPTY, mermaid_chart(daily_opened_closed), rendering.EMPTY]
    return rendering.join("\n", lines)
