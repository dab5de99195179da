"""The needs-info and stale lifecycles at work: webhooks that react at once, and the sweep.

The decisions live in ``bot.core.lifecycle`` (pure); this module fetches what they need and applies
the plans they return through ``bot.actions.apply``. Two ways in:

* webhooks, so state is current between sweeps: the original author's comment or body edit ends
  needs-info at once (label off, reopened if the bot had closed it), any person's comment takes the
  stale label off;
* the sweep (hourly inside the server, jittered; ``python -m bot sweep``), which pings, closes and
  marks stale. It finds candidates with a handful of search requests instead of listing every
  issue, keeps a ceiling of writes per run (``lifecycle.max_writes_per_run``) and remembers what it
  left so the next run does that first, and checks the audit log as well as its hidden markers
  before pinging or closing, so a crash and rerun never pings twice.

Other features start and stop needs-info with ``start_needs_info`` and ``stop_needs_info``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import gidgethub
import gidgethub.apps
from gidgethub.routing import Router

from bot.actions import apply
from bot.config import RepoConfig, Settings
from bot.context import Context
from bot.core import lifecycle as core
from bot.core import render
from bot.core.plan import AddLabels, Close, Comment, CreateLabel, Plan, RemoveLabel, Reopen, marker
from bot.db import has_flag, kv_get, kv_set

log = logging.getLogger(__name__)
router = Router()

REQUEST_MARKER = "needs-info-request"
REQUEST_MESSAGE = (  # a render.fmt template: {what} is the maintainer's text, escaped
    "{author} thanks for the report. To look into it we need a little more information:\n\n"
    "{what}\n\n"
    "Please reply here (or edit the issue) with it; the {label} label comes off as soon as you do. "
    "Without a reply, a reminder follows in {ping_after_days} days and the issue is closed as not planned "
    "{close_after_days} days after that; replying afterwards reopens it."
)
REQUEST_MESSAGE_NO_LABEL = (
    "{author} thanks for the report. To look into it we need a little more information:\n\n"
    "{what}\n\n"
    "Please reply here with it."
)
NEEDS_INFO_LABEL_COLOR = "d876e3"
NEEDS_INFO_LABEL_DESCRIPTION = "Waiting for information from the issue's author"

WRITE_ROLES = frozenset({"admin", "maintain", "write"})
# Searches see GitHub's index, which lags writes by up to a minute or so: look back a little further.
SEARCH_LAG = timedelta(minutes=15)
# Beyond this, nothing is "due later": the memo records "never" (see next_due_at).
FAR_FUTURE = timedelta(days=36500)
PROJECT_ADDED = frozenset({"added_to_project", "added_to_project_v2"})
PROJECT_REMOVED = frozenset({"removed_from_project", "removed_from_project_v2"})


def ensure_schema(db) -> None:
    """``lifecycle_memo``: when each examined issue next has something due, as of its ``updated_at``.

    Bots touch issues too (and their touches move ``updated_at``, which is all the search sees), and
    an issue that waits on maintainers stays in the stale search forever. So each issue's timeline is
    read once per change: the pure core says when something next falls due (``next_due_at``, NULL
    for never), and later runs pick the issue up from here at that time, without searching for it.
    """
    db.execute(
        """CREATE TABLE IF NOT EXISTS lifecycle_memo (
            repo TEXT NOT NULL,
            issue INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            frozen INTEGER NOT NULL,
            config_sha TEXT NOT NULL,
            next_due_at REAL,
            checked_at REAL NOT NULL,
            PRIMARY KEY (repo, issue)
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS lifecycle_memo_due ON lifecycle_memo(repo, next_due_at)")


def bot_login_for(settings: Settings) -> str:
    """The login GitHub shows for this App's writes (``<slug>[bot]``)."""
    return f"{settings.app_slug}[bot]"


def _state_key(repo: str) -> str:
    return f"lifecycle:sweep:{repo}"


def _issue_labels(issue: dict[str, Any]) -> set[str]:
    return {(label.get("name") or "").lower() for label in issue.get("labels") or []}


# ------------------------------------------------------------------------------------ webhooks
async def bot_closed_issue(ctx: Context, issue_number: int) -> bool:
    """Whether the last close was the bot's own (the lifecycle's), so the author's reply may reopen it.

    GitHub names the bot as the closer for a maintainer's ``/close`` or ``/duplicate`` too; those are
    a person's decision and an author's reply must not undo them (see ``bot.features.commands.close_decider``).
    """
    from bot.core.commands import LIFECYCLE
    from bot.features.commands import close_decider

    return await close_decider(ctx, issue_number) == LIFECYCLE


async def _on_activity(ctx: Context, issue: dict[str, Any], actor: dict[str, Any],
                       old_body: str | None) -> None:
    if issue.get("pull_request"):
        return
    section = ctx.config.section("lifecycle")
    bot_login = bot_login_for(ctx.settings)
    label = section["needs_info"]["label"]
    is_author = (actor.get("login") or "").lower() == ((issue.get("user") or {}).get("login") or "").lower()
    bot_closed = False
    if issue.get("state") == "closed" and is_author and label.lower() in _issue_labels(issue):
        bot_closed = await bot_closed_issue(ctx, int(issue["number"]))
    decision = core.on_author_activity(issue, actor, section, bot_login=bot_login, bot_closed=bot_closed,
                                       old_body=old_body)
    extra = {"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": issue["number"]}
    if not decision:
        log.debug("lifecycle: nothing to do (%s)", decision.reason, extra=extra)
        return
    log.info("lifecycle %s: %s", decision.kind, decision.reason, extra=extra)
    await apply(decision.plan, ctx)


@router.register("issue_comment", action="created")
async def on_comment_created(event, gh, ctx):
    """A comment: the author's ends needs-info; anyone's takes the stale label off."""
    actor = event.data["comment"].get("user") or event.data.get("sender") or {}
    await _on_activity(ctx, event.data["issue"], actor, old_body=None)


@router.register("issues", action="edited")
async def on_issue_edited(event, gh, ctx):
    """An edit of the body by the author that adds information ends needs-info (a title-only edit does not)."""
    issue = event.data["issue"]
    changes = event.data.get("changes") or {}
    old_body = (changes.get("body") or {}).get("from")
    if old_body is None:
        old_body = issue.get("body") or ""  # the body did not change: no new information
    await _on_activity(ctx, issue, event.data.get("sender") or {}, old_body=old_body)


@router.register("issues", action="labeled")
async def on_issue_labeled(event, gh, ctx):
    """A maintainer adding the needs-info label starts the waiting period; the sweep reads the label time."""
    label = (event.data.get("label") or {}).get("name") or ""
    if label.lower() == ctx.config.section("lifecycle")["needs_info"]["label"].lower():
        log.info("needs-info started by %s", (event.data.get("sender") or {}).get("login"),
                 extra={"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": event.data["issue"]["number"]})


# -------------------------------------------------------------------------- for other features
def request_message(author: str, what: str, label: str, settings: dict[str, Any]) -> render.Safe:
    """The needs-info question: mentions the author only; ``what`` (the maintainer's words) and the
    label are rendered as inert text and code (``settings`` is the ``needs_info`` config section)."""
    what = what.strip() or "the details asked for above (version, steps to reproduce, what you expected)"
    template = REQUEST_MESSAGE if settings.get("enabled", True) else REQUEST_MESSAGE_NO_LABEL
    return render.fmt(template, author=render.mention(author), what=render.text(what, multiline=True, max_length=2000),
                      label=render.code(label), ping_after_days=int(settings.get("ping_after_days", 7)),
                      close_after_days=int(settings.get("close_after_days", 7)))


async def start_needs_info(ctx: Context, issue_number: int, what: str, actor: str) -> list[dict[str, Any]]:
    """Ask the author of ``issue_number`` for ``what`` and start the needs-info waiting period.

    Creates the label if the repository lacks it, adds it and comments with what is missing (one
    comment per delivery: a retried delivery edits it rather than posting again). With needs-info
    switched off in the repo config the question is still posted, without the label. Returns the
    results of ``apply``.
    """
    settings = ctx.config.section("lifecycle")["needs_info"]
    label = settings["label"]
    issue = await ctx.gh.getitem(ctx.url(f"/issues/{issue_number}"))
    author = (issue.get("user") or {}).get("login") or ""
    body = request_message(author, what, label, settings)
    plan = Plan(reason=f"needs-info requested by {actor}", data={"lifecycle": "start"})
    if settings["enabled"]:
        plan.add(CreateLabel(label, NEEDS_INFO_LABEL_COLOR, NEEDS_INFO_LABEL_DESCRIPTION))
        plan.add(AddLabels(issue_number, (label,)))
    plan.add(Comment(issue_number, body, marker=marker(REQUEST_MARKER, ctx.delivery_id)))
    log.info("needs-info started by %s", actor, extra={"delivery": ctx.delivery_id, "repo": ctx.repo,
                                                        "issue": issue_number})
    return await apply(plan, ctx)


async def stop_needs_info(ctx: Context, issue_number: int, actor: str) -> list[dict[str, Any]]:
    """End needs-info (e.g. ``/info-provided``): remove the label, and reopen the issue if the bot closed it."""
    label = ctx.config.section("lifecycle")["needs_info"]["label"]
    issue = await ctx.gh.getitem(ctx.url(f"/issues/{issue_number}"))
    plan = Plan(reason=f"needs-info ended by {actor}", data={"lifecycle": "stop"})
    if label.lower() in _issue_labels(issue):
        plan.add(RemoveLabel(issue_number, label))
        if issue.get("state") == "closed" and await bot_closed_issue(ctx, issue_number):
            plan.add(Reopen(issue_number))
    log.info("needs-info ended by %s", actor, extra={"delivery": ctx.delivery_id, "repo": ctx.repo,
                                                      "issue": issue_number})
    return await apply(plan, ctx) if plan else []


# -------------------------------------------------------------------------------------- sweep
@dataclass
class SweepEntry:
    """One issue the sweep acted on (or would have, or left, or skipped)."""

    number: int
    kind: str
    reason: str
    detail: str = ""


_VERBS = {"ping": ("pinged", "would ping"), "close": ("closed", "would close"),
          "remove_label": ("removed the label", "would remove the label"),
          "reopen": ("reopened", "would reopen"), "mark_stale": ("marked stale", "would mark stale")}


@dataclass
class SweepReport:
    """What one sweep of one repository did; ``lines()`` is what the CLI prints and the log says."""

    repo: str
    dry_run: bool
    max_writes: int
    candidates: int = 0
    examined: int = 0
    idle: int = 0
    writes: int = 0
    done: list[SweepEntry] = field(default_factory=list)
    left: list[SweepEntry] = field(default_factory=list)
    skipped: list[SweepEntry] = field(default_factory=list)
    errors: list[SweepEntry] = field(default_factory=list)

    def summary(self) -> str:
        mode = " (dry run)" if self.dry_run else ""
        return (f"{self.repo}{mode}: {self.candidates} candidates, {self.examined} examined, "
                f"{len(self.done)} {'would be handled' if self.dry_run else 'handled'} with {self.writes} writes, "
                f"{len(self.errors)} failed, {len(self.left)} left for the next run")

    def lines(self) -> list[str]:
        out = []
        for entry in self.done:
            verb = _VERBS.get(entry.kind, (entry.kind, f"would {entry.kind}"))[1 if self.dry_run else 0]
            out.append(f"  #{entry.number} {verb}: {entry.reason}")
        for entry in self.skipped:
            out.append(f"  #{entry.number} {entry.kind} skipped: {entry.detail}")
        for entry in self.errors:
            out.append(f"  #{entry.number} {entry.kind} failed: {entry.detail}")
        if self.left:
            numbers = ", ".join(f"#{entry.number}" for entry in self.left)
            out.append(f"  left for the next run (max_writes_per_run: {self.max_writes}): {numbers}")
        return [self.summary(), *out]


def _search_date(moment: datetime) -> str:
    return core.iso(moment)


def candidate_queries(repo: str, section: dict[str, Any], *, now: datetime, since: datetime) -> list[str]:
    """The issue searches that find everything the lifecycles might act on, and little else.

    needs-info: open issues untouched for ``min(ping_after_days, close_after_days)`` (a ping or close may
    be due), plus any labeled issue, open or closed, touched since the last run (a reply the webhooks
    missed, a reopen). stale: open issues untouched for ``days_until_stale`` (with the cheap exemptions
    as qualifiers) or touched since the last run (by anyone: a bot's touch moves ``updated_at`` but is
    not activity), stale-labeled issues untouched for ``days_until_close``, and stale-labeled issues
    touched since the last run (activity removes the label). Issues touched earlier whose time comes
    later are picked up from ``lifecycle_memo``, not searched for.
    """
    queries = []
    needs_info = section.get("needs_info") or {}
    stale = section.get("stale") or {}
    base = f"repo:{repo} is:issue"
    if needs_info.get("enabled", True):
        label = needs_info.get("label", "needs-info")
        quiet = min(needs_info.get("ping_after_days", 7), needs_info.get("close_after_days", 7))
        queries.append(f'{base} is:open label:"{label}" updated:<{_search_date(now - timedelta(days=quiet))}')
        queries.append(f'{base} label:"{label}" updated:>={_search_date(since)}')
    if stale.get("enabled", False):
        label = stale.get("label", "stale")
        filters = ""  # the exemptions search can express; the core checks them all again
        if needs_info.get("enabled", True):
            filters += f' -label:"{needs_info.get("label", "needs-info")}"'
        for pattern in stale.get("exempt_labels") or []:
            if not any(char in pattern for char in '*?["'):
                filters += f' -label:"{pattern}"'
        if stale.get("exempt_milestones", True):
            filters += " no:milestone"
        if stale.get("exempt_assignees", True):
            filters += " no:assignee"
        untouched = now - timedelta(days=stale.get("days_until_stale", 60))
        queries.append(f"{base} is:open updated:<{_search_date(untouched)}{filters}")
        # Touched since the last run, perhaps only by bots: read once; the memo then says when it is due.
        queries.append(f"{base} is:open updated:>={_search_date(since)}{filters}")
        close_after = now - timedelta(days=stale.get("days_until_close", 14))
        queries.append(f'{base} is:open label:"{label}" updated:<{_search_date(close_after)}')
        queries.append(f'{base} is:open label:"{label}" updated:>={_search_date(since)}')
    return queries


async def _search(gh, query: str) -> list[dict[str, Any]]:
    params = urlencode({"q": query, "sort": "created", "order": "asc", "per_page": 100})
    return [item async for item in gh.getiter(f"/search/issues?{params}", iterable_key="items")]


async def _timeline(gh, repo: str, number: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The issue's timeline and, taken from it, its comments: one (conditional, paginated) request."""
    timeline = [entry async for entry in gh.getiter(f"/repos/{repo}/issues/{number}/timeline?per_page=100")]
    comments = [entry for entry in timeline if entry.get("event") == "commented"]
    return timeline, comments


def in_project(timeline: list[dict[str, Any]]) -> bool:
    """Whether the timeline leaves the issue in a project (classic or v2): adds outnumber removals."""
    balance = 0
    for entry in timeline:
        if entry.get("event") in PROJECT_ADDED:
            balance += 1
        elif entry.get("event") in PROJECT_REMOVED:
            balance = max(0, balance - 1)
    return balance > 0


class _Permissions:
    """Write access of commenters, asked once per login per sweep."""

    def __init__(self, gh, repo: str) -> None:
        self.gh = gh
        self.repo = repo
        self.cache: dict[str, bool] = {}

    async def can_write(self, login: str) -> bool:
        key = login.lower()
        if key not in self.cache:
            try:
                data = await self.gh.getitem(f"/repos/{self.repo}/collaborators/{login}/permission")
            except gidgethub.BadRequest as exc:
                if exc.status_code != 404:
                    raise
                data = {}
            self.cache[key] = (data.get("role_name") in WRITE_ROLES
                               or data.get("permission") in ("admin", "write"))
        return self.cache[key]

    async def write_logins(self, issue: dict[str, Any], comments: list[dict[str, Any]], bot_login: str) -> set[str]:
        author = ((issue.get("user") or {}).get("login") or "").lower()
        logins = {(comment.get("user") or {}).get("login") or "" for comment in comments
                  if core.is_human(comment.get("user"), bot_login)}
        return {login for login in logins if login and login.lower() != author and await self.can_write(login)}


async def _frozen_in_thread(permissions: _Permissions, comments: list[dict[str, Any]], bot_login: str) -> bool:
    """Whether a person with write access left ``/freeze`` as the thread's last freeze command."""
    commands = core.freeze_commands(comments, bot_login)
    if not commands:
        return False
    writers = {login for login in {entry[0] for entry in commands} if await permissions.can_write(login)}
    return core.frozen_in_thread(commands, writers)


def _audited_markers(db, repo: str, number: int) -> set[str]:
    """Markers of comments the audit log says reached GitHub for this issue."""
    rows = db.execute("SELECT details FROM audit WHERE repo = ? AND issue = ? AND action = 'Comment' "
                      "AND result IN ('ok', 'skipped')", [repo, number]).fetchall()
    found = set()
    for (details,) in rows:
        try:
            value = json.loads(details or "{}").get("marker")
        except ValueError:
            continue
        if value:
            found.add(value)
    return found


def _interrupted_close(issue: dict[str, Any], timeline: list[dict[str, Any]], comments: list[dict[str, Any]],
                       section: dict[str, Any], *, bot_login: str, frozen: bool) -> core.LifecycleDecision | None:
    """A close whose comment was posted but whose state change never happened (a crash in between).

    The core reads the close comment as "closed once and reopened by a person" and, rightly, never
    closes again; the timeline tells the two apart: a person's reopen leaves a ``reopened`` event after
    the comment, a crash leaves no ``closed`` event at all.
    """
    if frozen or issue.get("state", "open") != "open":
        return None
    labels = _issue_labels(issue)
    kinds = []
    if (section.get("needs_info") or {}).get("label", "needs-info").lower() in labels:
        kinds.append(core.CLOSE_MARKER)
    stale = section.get("stale") or {}
    if stale.get("enabled", False) and stale.get("label", "stale").lower() in labels:
        kinds.append(core.STALE_CLOSE_MARKER)
    close_comments = [
        comment for comment in comments
        if (comment.get("user") or {}).get("login", "").lower() == bot_login.lower()
        and any(f"<!-- first-responder:{kind}:" in (comment.get("body") or "") for kind in kinds)
    ]
    if not close_comments:
        return None
    posted = max(core.parse_time(comment.get("created_at")) for comment in close_comments)
    for entry in timeline:
        if entry.get("event") in ("closed", "reopened") and (core.parse_time(entry.get("created_at")) or posted) >= posted:
            return None
    plan = Plan(actions=[Close(int(issue["number"]), "not_planned")],
                reason="finishing a close interrupted after its comment", data={"lifecycle": "close"})
    return core.LifecycleDecision("close", plan, plan.reason)


def next_due_at(issue: dict[str, Any], timeline: list[dict[str, Any]], comments: list[dict[str, Any]],
                now: datetime, section: dict[str, Any], *, write_logins: set[str], frozen: bool,
                bot_login: str) -> datetime | None:
    """The first moment (to the minute) at which ``core.due`` has something to do, if nothing else
    happens on the issue; ``None`` if that never comes. ``due`` is pure and, without new activity,
    once something is due it stays due, so a bisection over time finds the moment.
    """
    def is_due(moment: datetime) -> bool:
        return bool(core.due(issue, timeline, comments, moment, section, write_logins=write_logins,
                             frozen=frozen, bot_login=bot_login))

    if is_due(now):
        return now
    low, high = now, now + FAR_FUTURE
    if not is_due(high):
        return None
    while high - low > timedelta(minutes=1):
        middle = low + (high - low) / 2
        if is_due(middle):
            high = middle
        else:
            low = middle
    return high


def _config_sha(section: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:16]


def _write_cost(plan: Plan) -> int:
    # Creating a label happens once per repository; it is not what the ceiling protects against.
    return sum(1 for action in plan.actions if not isinstance(action, CreateLabel))


async def sweep_repo(gh, db, repo: str, config_section: dict[str, Any], *, now: datetime, dry_run: bool,
                     bot_login: str, ctx: Context | None = None, settings: Settings | None = None,
                     installation_id: int = 0, delivery_id: str | None = None) -> SweepReport:
    """Run both lifecycles over ``repo`` once; ``config_section`` is its ``lifecycle`` config.

    Writes go through ``bot.actions.apply`` with ``ctx`` (built here when not given; ``dry_run`` forces a
    dry run either way). At most ``max_writes_per_run`` writes are made; issues with something due
    beyond that are recorded and handled first by the next run, and the report and the log say how
    many were left.
    """
    now = now.astimezone(timezone.utc)
    delivery_id = delivery_id or (ctx.delivery_id if ctx is not None else f"sweep-{core.iso(now)}")
    if ctx is None:
        base = settings or Settings()
        values = RepoConfig().values
        values["lifecycle"] = config_section
        ctx = Context(db=db, settings=dataclasses.replace(base, dry_run=dry_run or base.dry_run), repo=repo,
                      installation_id=installation_id, delivery_id=delivery_id, config=RepoConfig(values=values),
                      gh=gh)
    elif dry_run and not ctx.dry_run:
        ctx = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, dry_run=True))
    max_writes = int(config_section.get("max_writes_per_run", 30))
    report = SweepReport(repo=repo, dry_run=ctx.dry_run, max_writes=max_writes)
    extra = {"delivery": delivery_id, "repo": repo}

    state = kv_get(db, _state_key(repo), {}) or {}
    needs_info = config_section.get("needs_info") or {}
    stale = config_section.get("stale") or {}
    first_since = now - timedelta(days=max(needs_info.get("ping_after_days", 7) + needs_info.get("close_after_days", 7),
                                           stale.get("days_until_close", 14)))
    since = core.parse_time(state.get("since")) or first_since
    found: dict[int, dict[str, Any]] = {}
    for query in candidate_queries(repo, config_section, now=now, since=since):
        for item in await _search(gh, query):
            found.setdefault(int(item["number"]), item)
    pending = [int(number) for number in state.get("pending") or []]
    config_sha = _config_sha(config_section)
    memo = {row["issue"]: row for row in db.query(
        "SELECT issue, updated_at, frozen, config_sha, next_due_at FROM lifecycle_memo WHERE repo = ?", [repo])}
    due_by_memo = [number for number, row in memo.items()
                   if row["next_due_at"] is not None and row["next_due_at"] <= now.timestamp()]
    order = list(dict.fromkeys(pending + sorted(set(found) | set(due_by_memo))))
    report.candidates = len(order)

    permissions = _Permissions(gh, repo)
    stale_on = bool(stale.get("enabled", False))
    left_numbers: list[int] = []
    for number in order:
        issue = found.get(number)
        try:
            if issue is None:  # left by the last run, or due by the memo: not in this run's searches
                issue = await gh.getitem(f"/repos/{repo}/issues/{number}")
            if issue.get("pull_request"):
                continue
            frozen = db_frozen = has_flag(db, repo, number, "frozen")
            row = memo.get(number)
            if (row is not None and number not in pending and row["updated_at"] == (issue.get("updated_at") or "")
                    and row["frozen"] == int(db_frozen) and row["config_sha"] == config_sha
                    and (row["next_due_at"] is None or row["next_due_at"] > now.timestamp())):
                report.idle += 1  # unchanged since it was read, and its time has not come
                continue
            report.examined += 1
            timeline, comments = await _timeline(gh, repo, number)
            write_logins = (await permissions.write_logins(issue, comments, bot_login)
                            if stale_on and issue.get("state") == "open" else set())
            if not frozen:
                # /freeze lives in the database and in the thread; a restored database may have lost it.
                frozen = await _frozen_in_thread(permissions, comments, bot_login)
            subject = {**issue, "in_project": in_project(timeline)}
            decision = core.due(subject, timeline, comments, now, config_section, write_logins=write_logins,
                                frozen=frozen, bot_login=bot_login)
            if not decision:
                decision = _interrupted_close(subject, timeline, comments, config_section, bot_login=bot_login,
                                              frozen=frozen) or decision
        except gidgethub.HTTPException as exc:
            log.warning("sweep: cannot read #%s: %s", number, exc, extra={**extra, "issue": number})
            report.errors.append(SweepEntry(number, "read", "", str(exc)))
            continue
        if not decision:
            when = next_due_at(subject, timeline, comments, now, config_section, write_logins=write_logins,
                               frozen=frozen, bot_login=bot_login)
            db.execute("INSERT OR REPLACE INTO lifecycle_memo(repo, issue, updated_at, frozen, config_sha, "
                       "next_due_at, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [repo, number, issue.get("updated_at") or "", int(db_frozen), config_sha,
                        when.timestamp() if when else None, time.time()])
            continue
        # Acting changes the issue; the next run reads it afresh.
        db.execute("DELETE FROM lifecycle_memo WHERE repo = ? AND issue = ?", [repo, number])

        plan = decision.plan
        if decision.kind in ("ping", "close"):
            # The thread's markers are the first guard (core); the audit log is the second, for a
            # marker comment that reached GitHub and then vanished from the thread.
            already = _audited_markers(db, repo, number)
            kept = [action for action in plan.actions
                    if not (isinstance(action, Comment) and action.marker and action.marker in already)]
            if len(kept) != len(plan.actions):
                if not any(not isinstance(action, Comment) for action in kept):
                    report.skipped.append(SweepEntry(number, decision.kind, decision.reason,
                                                     "the audit log says its comment was already posted"))
                    continue
                plan = dataclasses.replace(plan, actions=kept)

        cost = _write_cost(plan)
        # A plan is applied whole; the first always runs, or a 2-write close could never happen under
        # a ceiling of 1 (0 means report only).
        if max_writes <= 0 or (report.writes > 0 and report.writes + cost > max_writes):
            report.left.append(SweepEntry(number, decision.kind or "", decision.reason))
            left_numbers.append(number)
            continue
        try:
            results = await apply(plan, ctx)
        except Exception as exc:  # noqa: BLE001 - one issue's failure must not stop the sweep
            log.exception("sweep: %s on #%s failed", decision.kind, number, extra={**extra, "issue": number})
            report.errors.append(SweepEntry(number, decision.kind or "", decision.reason, f"{type(exc).__name__}: {exc}"))
            report.writes += cost
            continue
        report.writes += sum(1 for result in results if result["result"] != "skipped"
                             and result["action"] != "CreateLabel")
        report.done.append(SweepEntry(number, decision.kind or "", decision.reason))
        log.info("sweep: %s%s #%s: %s", "would " if ctx.dry_run else "", decision.kind, number, decision.reason,
                 extra={**extra, "issue": number})

    if not ctx.dry_run:
        # A dry run must not change what the next real run does first.
        kv_set(db, _state_key(repo), {"pending": left_numbers, "since": core.iso(now - SEARCH_LAG),
                                      "finished_at": core.iso(now), "left": len(left_numbers),
                                      "stopped_at": left_numbers[0] if left_numbers else None})
    if report.left:
        log.warning("sweep %s: ceiling of %d writes reached; %d left for the next run (%s)", repo, max_writes,
                    len(report.left), ", ".join(f"#{entry.number}" for entry in report.left), extra=extra)
    log.info("sweep %s", report.summary(), extra=extra)
    return report


async def scheduled_sweep(services, repo: str, installation_id: int) -> SweepReport:
    """The hourly sweep of one installed repository (called by ``bot.scheduler``)."""
    now = datetime.now(timezone.utc)
    ctx = await services.context_for(repo, installation_id, delivery_id=f"sweep-{core.iso(now)}")
    return await sweep_repo(ctx.gh, ctx.db, repo, ctx.config.section("lifecycle"), now=now, dry_run=ctx.dry_run,
                            bot_login=bot_login_for(ctx.settings), ctx=ctx)


async def installed_repositories(services) -> list[tuple[str, int]]:
    """(repo, installation id) for every repository the App is installed on.

    The installations table (filled by installation webhooks) answers; when it is empty, GitHub is
    asked (``/app/installations``, then each installation's repositories) and the table filled in.
    """
    rows = [(row["repo"], row["installation_id"])
            for row in services.db.query("SELECT repo, installation_id FROM installations ORDER BY repo")]
    if rows:
        return rows
    from bot.github import USER_AGENT, GitHubAPI

    app_gh = GitHubAPI(services.session, USER_AGENT, base_url=services.settings.api_url)
    jwt = gidgethub.apps.get_jwt(app_id=services.settings.app_id, private_key=services.settings.private_key)
    found = []
    async for installation in app_gh.getiter("/app/installations?per_page=100", jwt=jwt):
        gh = await services.github.for_installation(installation["id"])
        async for item in gh.getiter("/installation/repositories?per_page=100", iterable_key="repositories"):
            found.append((item["full_name"], installation["id"]))
            services.db["installations"].upsert({"repo": item["full_name"], "installation_id": installation["id"],
                                                 "added_at": time.time()}, pk="repo")
    return sorted(found)


async def sweep_main(argv: list[str]) -> int:
    """``python -m bot sweep [OWNER/NAME] [--dry-run]``: sweep one or every installed repository and
    print what was done (or, with ``--dry-run``, what would be)."""
    from bot.app import Services
    from bot.cli import ArgumentParser, repo_name
    from bot.config import cli_settings

    parser = ArgumentParser(prog="python -m bot sweep",
                            description="Run the needs-info/stale sweep now and print what it did.")
    parser.add_argument("repo", nargs="?", type=repo_name, help="OWNER/NAME (default: every installed repository)")
    parser.add_argument("--dry-run", action="store_true", help="write nothing; print what would be done")
    args = parser.parse_args(argv)
    settings = cli_settings("sweep")
    if settings is None:
        return 2
    if args.dry_run:
        settings.dry_run = True
    services = Services(settings)
    await services.start()
    status = 0
    try:
        repos = await installed_repositories(services)
        if args.repo:
            repos = [(repo, iid) for repo, iid in repos if repo.lower() == args.repo.lower()]
            if not repos:
                print(f"sweep: the App is not installed on {args.repo}", file=sys.stderr)
                return 1
        if not repos:
            print("sweep: the App is not installed on any repository")
        for repo, installation_id in repos:
            try:
                report = await scheduled_sweep(services, repo, installation_id)
            except gidgethub.HTTPException as exc:
                print(f"{repo}: sweep failed: {exc}", file=sys.stderr)
                status = 1
                continue
            print("\n".join(report.lines()))
            if report.errors:
                status = 1
    finally:
        await services.close()
    return status
