"""The weekly digest: gather a week of the tracker through the API, render it, post it once.

The decisions (score, rank, counts, chart, markdown) live in ``bot.core.digest``; this module fetches
their inputs and applies the plan. The scheduler (``scheduled_digest``), the CLI (``digest_main``) and
the ``/digest`` command (``post_digest``) all go through ``build_digest``, so they produce the same text.

Cost: a repository with 10,000 open issues must not cost 10,000 requests. Nothing here lists every
open issue. Search (``GET /search/issues``) with date qualifiers returns only what was opened or
closed in the charted eight weeks; ``total_count`` of four searches gives "still open" at both week
ends; three sorted searches (most reactions, most comments, most recently updated) give the
candidates for the top list, with an upper bound proving the true top N is among them; comments are
read only for candidates that could still make the list and for the oldest open issues (needs a
maintainer), and a per-issue cache keyed by ``updated_at`` means next week only changed threads are
read again. Every GET goes through the client's ETag cache, so unchanged pages come back as 304.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode

import gidgethub
import sqlite_utils
from gidgethub.routing import Router

from bot.actions import apply, find_marked_issue
from bot.core import digest as core
from bot.core import render
from bot.core.lifecycle import next_needs_info_step
from bot.core.plan import Close, Comment, CreateIssue, CreateLabel, Plan, marker
from bot.db import has_flag, kv_get, kv_set

log = logging.getLogger(__name__)
router = Router()  # nothing to route: `/digest` is parsed by the commands feature, which calls post_digest

SEARCH_PAGE = 100
SEARCH_CAP = 1000  # GitHub's search returns at most 1,000 results per query
CANDIDATE_PAGES = 3  # pages of each sorted candidate search before giving up on a proof of the top N
NEEDS_MAINTAINER_SHOWN = 20  # the oldest this many open issues without a maintainer's reply
NEEDS_MAINTAINER_FETCH_BUDGET = 150  # comment threads read at most while looking for them
WAITING_ON_AUTHORS_MAX = 50
READ_CONCURRENCY = 4  # GitHub asks for mostly serial requests; a few reads at once are tolerated
LABEL_COLOR = "0e8a16"
LABEL_DESCRIPTION = "Weekly digest of the issue tracker (first-responder)"
NEXT_DIGEST_MESSAGE = "The digest for the following week is out: {ref}. Closing this one."
# author_association values that prove a user has no write access (never contributed anywhere).
NO_WRITE_ASSOCIATIONS = frozenset({"FIRST_TIMER", "FIRST_TIME_CONTRIBUTOR", "MANNEQUIN"})
_LOCKS: dict[tuple[str, int], asyncio.Lock] = {}


def ensure_schema(db: sqlite_utils.Database) -> None:
    """Per-issue caches keyed by the issue's ``updated_at``: comment threads and timelines (``kind``), and
    model summaries. GitHub moves ``updated_at`` on every comment, label and edit, so a match means
    nothing the digest reads has changed."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS digest_threads (
            repo TEXT NOT NULL,
            number INTEGER NOT NULL,
            kind TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            entries TEXT NOT NULL,
            PRIMARY KEY (repo, number, kind)
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS digest_summaries (
            repo TEXT NOT NULL,
            number INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            summary TEXT NOT NULL,
            model TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (repo, number)
        )"""
    )


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class DigestInput:
    """Everything ``bot.core.digest`` needs for one week, fetched from GitHub.

    ``recent`` holds issues opened or closed in the charted weeks (enough for counts and chart);
    ``still_open`` / ``still_open_before`` are the open totals at the window's end and start;
    ``candidates`` hold the open issues that can reach the top list, with ``commenters`` filled in;
    ``candidates_exact`` says whether the bound proved no other open issue can outrank them.
    """

    repo: str
    start: datetime
    end: datetime
    recent: list[dict[str, Any]] = field(default_factory=list)
    still_open: int = 0
    still_open_before: int = 0
    candidates: list[dict[str, Any]] = field(default_factory=list)
    candidates_exact: bool = True
    needs_maintainer: list[dict[str, Any]] = field(default_factory=list)
    needs_maintainer_complete: bool = True
    comments_by_issue: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    write_logins: set[str] = field(default_factory=set)
    waiting_on_authors: list[tuple[dict[str, Any], str, datetime]] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def _search_time(moment: datetime) -> str:
    """A timestamp in the form GitHub's search qualifiers document (``YYYY-MM-DDTHH:MM:SS+00:00``)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _base_query(repo: str, exclude_labels: Iterable[str]) -> str:
    excluded = " ".join(f'-label:"{label}"' for label in exclude_labels if label)
    return f"repo:{repo} is:issue" + (f" {excluded}" if excluded else "")


def _human(user: Mapping[str, Any] | None) -> bool:
    if not user:
        return False
    return user.get("type") != "Bot" and not (user.get("login") or "").lower().endswith("[bot]")


class _Reader:
    """One run's reads: the search and REST helpers, a request tally, and cached permission answers."""

    def __init__(self, gh, repo: str, db: sqlite_utils.Database | None) -> None:
        self.gh = gh
        self.repo = repo
        self.db = db
        self.stats: dict[str, int] = {"search": 0, "comments": 0, "permission": 0, "timeline": 0}
        self._permissions: dict[str, bool] = {}
        self._permission_tasks: dict[str, asyncio.Task] = {}
        self._limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def search(self, q: str, *, sort: str | None = None, order: str = "desc", per_page: int = SEARCH_PAGE,
                     page: int = 1) -> dict[str, Any]:
        params: dict[str, Any] = {"q": q, "per_page": per_page, "page": page}
        if sort:
            params.update(sort=sort, order=order)
        self.stats["search"] += 1
        async with self._limit:
            return await self.gh.getitem("/search/issues?" + urlencode(params, quote_via=quote))

    async def total(self, q: str) -> int:
        """How many issues match: one request, one result."""
        return int((await self.search(q, per_page=1))["total_count"])

    async def pages(self, q: str, *, sort: str, order: str = "desc",
                    max_pages: int = SEARCH_CAP // SEARCH_PAGE) -> AsyncIterator[dict[str, Any]]:
        """Items of a sorted search, fetching a page only when the caller reads that far."""
        for page in range(1, max_pages + 1):
            data = await self.search(q, sort=sort, order=order, page=page)
            items = data.get("items") or []
            for item in items:
                yield item
            if len(items) < SEARCH_PAGE or page * SEARCH_PAGE >= min(int(data["total_count"]), SEARCH_CAP):
                return

    async def in_range(self, q: str, qualifier: str, low: datetime, high: datetime) -> list[dict[str, Any]]:
        """Every issue with ``qualifier`` (created/closed) in ``[low, high)``, splitting the range when a
        query would pass the 1,000-result cap of search."""
        bounded = f"{q} {qualifier}:{_search_time(low)}..{_search_time(high - timedelta(seconds=1))}"
        first = await self.search(bounded, sort="created", order="asc")
        total = int(first["total_count"])
        if total > SEARCH_CAP and high - low > timedelta(seconds=2):
            middle = low + (high - low) / 2
            middle = middle.replace(microsecond=0)
            return await self.in_range(q, qualifier, low, middle) + await self.in_range(q, qualifier, middle, high)
        items = list(first.get("items") or [])
        rest = [self.search(bounded, sort="created", order="asc", page=page)
                for page in range(2, math.ceil(min(total, SEARCH_CAP) / SEARCH_PAGE) + 1)]
        for data in await asyncio.gather(*rest):
            items.extend(data.get("items") or [])
        return items

    def _cached(self, number: int, kind: str, updated: str) -> list[dict[str, Any]] | None:
        if self.db is None:
            return None
        row = self.db.execute("SELECT updated_at, entries FROM digest_threads WHERE repo = ? AND number = ? "
                              "AND kind = ?", [self.repo, number, kind]).fetchone()
        return json.loads(row[1]) if row and row[0] == updated else None

    def _remember(self, number: int, kind: str, updated: str, entries: list[dict[str, Any]]) -> None:
        if self.db is not None:
            self.db.execute("INSERT OR REPLACE INTO digest_threads(repo, number, kind, updated_at, entries) "
                            "VALUES (?, ?, ?, ?, ?)", [self.repo, number, kind, updated, json.dumps(entries)])

    async def comments(self, issue: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The issue's comments as ``{"user": {login, type}, "author_association", "created_at"}``, read
        from the cache when the issue has not changed since."""
        number, updated = int(issue["number"]), str(issue.get("updated_at") or "")
        cached = self._cached(number, "comments", updated)
        if cached is not None:
            return cached
        thread: list[dict[str, Any]] = []
        if issue.get("comments"):
            self.stats["comments"] += 1
            async with self._limit:
                thread = [
                    {"user": _slim_user(c.get("user")), "author_association": c.get("author_association") or "NONE",
                     "created_at": c.get("created_at")}
                    async for c in self.gh.getiter(f"/repos/{self.repo}/issues/{number}/comments?per_page=100")
                ]
        self._remember(number, "comments", updated, thread)
        return thread

    async def timeline(self, issue: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The issue's timeline, trimmed to what the needs-info lifecycle reads (cached like comments).

        Bodies are kept only for bots' comments: the lifecycle looks there for its own markers."""
        number, updated = int(issue["number"]), str(issue.get("updated_at") or "")
        cached = self._cached(number, "timeline", updated)
        if cached is not None:
            return cached
        self.stats["timeline"] += 1
        entries = []
        async with self._limit:
            async for entry in self.gh.getiter(f"/repos/{self.repo}/issues/{number}/timeline?per_page=100"):
                slim = {"event": entry.get("event"), "created_at": entry.get("created_at"),
                        "actor": _slim_user(entry.get("actor")), "user": _slim_user(entry.get("user"))}
                if entry.get("label"):
                    slim["label"] = {"name": (entry.get("label") or {}).get("name")}
                if entry.get("event") == "commented" and not _human(entry.get("user")):
                    slim["body"] = entry.get("body") or ""
                entries.append(slim)
        self._remember(number, "timeline", updated, entries)
        return entries

    async def is_writer(self, user: Mapping[str, Any] | None, association: str | None = None) -> bool:
        """Whether a user has write access (admin, maintain or write), asked once per login per run."""
        if not _human(user) or (association or "").upper() in NO_WRITE_ASSOCIATIONS:
            return False
        login = str(user.get("login")).lower()  # type: ignore[union-attr]
        if login in self._permissions:
            return self._permissions[login]
        task = self._permission_tasks.get(login)
        if task is None:
            task = asyncio.ensure_future(self._ask_permission(str(user.get("login"))))  # type: ignore[union-attr]
            self._permission_tasks[login] = task
        self._permissions[login] = await task
        return self._permissions[login]

    async def _ask_permission(self, login: str) -> bool:
        self.stats["permission"] += 1
        try:
            async with self._limit:
                data = await self.gh.getitem(f"/repos/{self.repo}/collaborators/{quote(login)}/permission")
        except gidgethub.BadRequest as exc:
            if exc.status_code == 404:  # not a collaborator (or a deleted user)
                return False
            raise
        role = data.get("role_name") or data.get("permission")
        return role in ("admin", "maintain", "write")

    @property
    def write_logins(self) -> set[str]:
        return {login for login, writer in self._permissions.items() if writer}


def _slim_user(user: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not user:
        return None
    return {"login": user.get("login") or "", "type": user.get("type") or "User"}


def _commenters(thread: list[Mapping[str, Any]]) -> list[str]:
    """Distinct people who commented (bots left out), in first-comment order."""
    return list(dict.fromkeys((c["user"]["login"]).lower() for c in thread if _human(c.get("user"))))


async def _top_candidates(reader: _Reader, base: str, as_of: datetime, top: int,
                          exclude_labels: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """Open issues that can reach the top ``top``, with ``commenters`` read where it matters.

    Three sorted searches give the open issues with the most reactions, the most comments and the
    latest activity. Comments are read best upper bound first (a thread has at most as many
    commenters as comments) until no unread candidate can overtake the N-th best exact score. An
    issue on none of the three lists has at most the last entry's reactions (worth at most 2 points
    each), comments (1.5 each) and activity, plus the age cap: when the N-th best exact score beats
    that bound, no unseen issue can displace the list; otherwise the next page of each search is read.
    Returns the candidates whose scores are exact and whether the list is proven.
    """
    query = f"{base} is:open"
    excluded = {label.lower() for label in exclude_labels}
    candidates: dict[int, dict[str, Any]] = {}
    refined: dict[int, dict[str, Any]] = {}
    exact = False
    for page in range(1, CANDIDATE_PAGES + 1):
        results = await asyncio.gather(*(reader.search(query, sort=sort, page=page)
                                         for sort in ("reactions", "comments", "updated")))
        exhausted = False
        lasts = []
        for data in results:
            items = data.get("items") or []
            for item in items:
                if not excluded & {(label.get("name") or "").lower() for label in item.get("labels") or []}:
                    candidates.setdefault(int(item["number"]), item)
            if len(items) < SEARCH_PAGE or page * SEARCH_PAGE >= min(int(data["total_count"]), SEARCH_CAP):
                exhausted = True
            lasts.append(items[-1] if items else {})
        await _refine(reader, candidates, refined, as_of, top)
        if exhausted:
            exact = True
            break
        most_reactions, most_comments, latest = lasts
        bound = core.score({
            "reactions": {"+1": int((most_reactions.get("reactions") or {}).get("total_count") or 0)},
            "comments": int(most_comments.get("comments") or 0),
            "updated_at": latest.get("updated_at"),
            "created_at": "1970-01-01T00:00:00Z",  # the age part at its cap
        }, as_of).total
        best = sorted((core.score(issue, as_of).total for issue in refined.values()), reverse=True)
        if len(best) >= top and best[top - 1] > bound:
            exact = True
            break
    if not exact:
        log.warning("digest %s: top %d not proven after %d pages per sort; showing the best seen",
                    reader.repo, top, CANDIDATE_PAGES, extra={"repo": reader.repo})
    return list(refined.values()), exact


async def _refine(reader: _Reader, candidates: dict[int, dict[str, Any]], refined: dict[int, dict[str, Any]],
                  as_of: datetime, top: int) -> None:
    """Read commenters for candidates, best upper bound first, until the top ``top`` is settled."""
    pending = sorted((issue for number, issue in candidates.items() if number not in refined),
                     key=lambda issue: (-core.score(issue, as_of).total, int(issue["number"])))
    for index, issue in enumerate(pending):
        best = sorted((core.score(item, as_of).total for item in refined.values()), reverse=True)
        if len(best) >= top and best[top - 1] > core.score(issue, as_of).total:
            return
        if "commenters" not in issue:
            # Read a few threads at once: the next candidates in line are the likeliest to be needed.
            batch = [item for item in pending[index:index + READ_CONCURRENCY] if "commenters" not in item]
            threads = await asyncio.gather(*(reader.comments(item) for item in batch))
            for item, thread in zip(batch, threads):
                item["commenters"] = _commenters(thread)
        refined[int(issue["number"])] = issue


async def _needs_maintainer(reader: _Reader, base: str) -> tuple[list[dict[str, Any]], dict[int, list], bool]:
    """The oldest open issues without a reply from anyone with write access.

    Issues without comments wait unless their author has write access; for the others the thread is
    read, oldest first, until every older issue has been checked (or the read budget is spent).
    """
    shown = NEEDS_MAINTAINER_SHOWN
    waiting: list[dict[str, Any]] = []
    threads: dict[int, list[dict[str, Any]]] = {}

    async def author_writes(issue: Mapping[str, Any]) -> bool:
        return await reader.is_writer(issue.get("user"), issue.get("author_association"))

    async for issue in reader.pages(f"{base} is:open comments:0", sort="created", order="asc"):
        if _human(issue.get("user")) and not await author_writes(issue):
            waiting.append(issue)
            threads[int(issue["number"])] = []
            if len(waiting) >= shown:
                break

    def oldest_key(issue: Mapping[str, Any]) -> tuple[str, int]:
        return str(issue.get("created_at") or ""), int(issue["number"])

    complete = True
    reads = 0
    async for issue in reader.pages(f"{base} is:open comments:>0", sort="created", order="asc"):
        waiting.sort(key=oldest_key)
        if len(waiting) >= shown and oldest_key(issue) >= oldest_key(waiting[shown - 1]):
            break
        if not _human(issue.get("user")):
            continue
        if reads >= NEEDS_MAINTAINER_FETCH_BUDGET:
            complete = False
            log.warning("digest %s: needs-maintainer scan stopped after %d threads", reader.repo, reads,
                        extra={"repo": reader.repo})
            break
        before = reader.stats["comments"]
        thread = await reader.comments(issue)
        reads += reader.stats["comments"] - before
        threads[int(issue["number"])] = thread
        answered = False
        # Likely maintainers first, so most answered threads cost one permission lookup at most.
        ordered = sorted(thread, key=lambda c: c.get("author_association") not in ("OWNER", "MEMBER", "COLLABORATOR"))
        for comment in ordered:
            if await reader.is_writer(comment.get("user"), comment.get("author_association")):
                answered = True
                break
        if not answered and not await author_writes(issue):
            waiting.append(issue)
    waiting.sort(key=oldest_key)
    return waiting[:shown], threads, complete


async def _waiting_on_authors(reader: _Reader, base: str, lifecycle: Mapping[str, Any],
                              bot_login: str) -> list[tuple[dict[str, Any], str, datetime]]:
    """Issues in the needs-info lifecycle and their next step (ping or close) with its date."""
    needs_info = lifecycle.get("needs_info") or {}
    if not needs_info.get("enabled", True):
        return []
    label = needs_info.get("label", "needs-info")
    issues = []
    async for issue in reader.pages(f'{base} is:open label:"{label}"', sort="created", order="asc"):
        issues.append(issue)
        if len(issues) >= WAITING_ON_AUTHORS_MAX:
            break
    timelines = await asyncio.gather(*(reader.timeline(issue) for issue in issues))
    waiting = []
    for issue, timeline in zip(issues, timelines):
        comments = [entry for entry in timeline if entry.get("event") == "commented"]
        events = [entry for entry in timeline if entry.get("event") != "commented"]
        step = next_needs_info_step(issue, events, comments, dict(lifecycle), bot_login=bot_login)
        if step is not None:
            waiting.append((issue, step[0], step[1]))
    return waiting


def _duplicates_found(db: sqlite_utils.Database | None, repo: str, start: datetime,
                      end: datetime) -> list[tuple[int, int]]:
    """``(issue, probable original)`` pairs the duplicates feature recorded in the window, if it exists.

    The duplicates feature records its suggestions in ``duplicate_suggestions`` (repo, issue,
    duplicate_of, created_at as a UNIX time); without that table the section is left out.
    """
    if db is None or "duplicate_suggestions" not in db.table_names():
        return []
    rows = db.execute(
        "SELECT issue, duplicate_of FROM duplicate_suggestions WHERE repo = ? AND created_at >= ? "
        "AND created_at < ? ORDER BY issue, duplicate_of", [repo, start.timestamp(), end.timestamp()]).fetchall()
    return [(int(issue), int(original)) for issue, original in rows]


async def gather(gh, repo: str, start: datetime, end: datetime, config: Mapping[str, Any], *,
                 db: sqlite_utils.Database | None = None, lifecycle: Mapping[str, Any] | None = None,
                 bot_login: str = "first-responder[bot]", now: datetime | None = None) -> DigestInput:
    """Fetch one week's digest inputs for ``repo`` through the API (see the module docstring for cost).

    ``config`` is the ``digest`` config section; ``db`` (optional) holds the per-issue thread cache;
    ``lifecycle`` is the lifecycle section (for "waiting on authors"); scores are taken at ``now``
    (default: the window's end, so a digest reads the same whenever it is rebuilt).
    """
    as_of = min(now or end, end)
    exclude = [str(label) for label in config.get("exclude_labels") or []] + [str(config.get("label") or "digest")]
    base = _base_query(repo, exclude)
    reader = _Reader(gh, repo, db)
    tz = config.get("timezone") or "UTC"
    first_day = end.astimezone(core._zone(tz)).date() - timedelta(days=core.CHART_DAYS)
    chart_start = datetime.combine(first_day, datetime.min.time(), tzinfo=core._zone(tz))
    low = min(chart_start, start - (end - start))

    (opened, closed, open_before_end, closed_since_end, open_before_start, closed_since_start) = await asyncio.gather(
        reader.in_range(base, "created", low, end),
        reader.in_range(base, "closed", low, end),
        reader.total(f"{base} is:open created:<{_search_time(end)}"),
        reader.total(f"{base} is:closed created:<{_search_time(end)} closed:>={_search_time(end)}"),
        reader.total(f"{base} is:open created:<{_search_time(start)}"),
        reader.total(f"{base} is:closed created:<{_search_time(start)} closed:>={_search_time(start)}"),
    )
    recent = list({int(issue["number"]): issue for issue in [*opened, *closed]}.values())
    candidates, exact = await _top_candidates(reader, base, as_of, int(config.get("top") or 10), exclude)
    needs, threads, complete = await _needs_maintainer(reader, base)
    waiting = await _waiting_on_authors(reader, base, lifecycle or {}, bot_login)
    return DigestInput(
        repo=repo, start=start, end=end, recent=recent,
        still_open=open_before_end + closed_since_end, still_open_before=open_before_start + closed_since_start,
        candidates=candidates, candidates_exact=exact, needs_maintainer=needs, needs_maintainer_complete=complete,
        comments_by_issue=threads, write_logins=reader.write_logins, waiting_on_authors=waiting,
        duplicates=_duplicates_found(db, repo, start, end), stats=dict(reader.stats),
    )


# --------------------------------------------------------------------------------------- summaries
async def _call_model(models: Any, issue: Mapping[str, Any], repo: str) -> tuple[str, str]:
    """Ask the cascade for a one-line summary: ``summarize`` if it has one, else ``predict``'s summary."""
    from bot.models.base import IssueText

    text = IssueText.from_dict(dict(issue), repo)
    method = getattr(models, "summarize", None) or getattr(models, "predict")
    if inspect.iscoroutinefunction(method):
        result = await method(text)
    else:
        result = await asyncio.to_thread(method, text)
        if inspect.isawaitable(result):
            result = await result
    if isinstance(result, str):
        return result, getattr(models, "model_id", "") or ""
    if isinstance(result, Mapping):
        return str(result.get("summary") or ""), str(result.get("model") or "")
    return str(getattr(result, "summary", "") or ""), str(getattr(result, "model", "") or "")


async def summaries(db: sqlite_utils.Database, repo: str, models: Any,
                    issues: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """One-line summaries for ``issues``, cached per issue and asked again only when ``updated_at`` moved.

    Without a model (or for issues flagged ``no-ai``) there is no summary and the title stands alone.
    A model error is logged and not cached, so the next digest tries again.
    """
    found: dict[int, str] = {}
    if models is None or not (hasattr(models, "summarize") or hasattr(models, "predict")):
        return found
    for issue in issues:
        number, updated = int(issue["number"]), str(issue.get("updated_at") or "")
        if has_flag(db, repo, number, "no-ai"):
            continue
        row = db.execute("SELECT updated_at, summary FROM digest_summaries WHERE repo = ? AND number = ?",
                         [repo, number]).fetchone()
        if row and row[0] == updated:
            summary = row[1]
        else:
            try:
                summary, model = await _call_model(models, issue, repo)
            except Exception:  # noqa: BLE001 - a summary is a nicety; the title still shows
                log.warning("digest %s: no summary for #%s", repo, number, exc_info=True,
                            extra={"repo": repo, "issue": number})
                continue
            summary = " ".join(summary.split())[:200]
            db.execute("INSERT OR REPLACE INTO digest_summaries(repo, number, updated_at, summary, model, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", [repo, number, updated, summary, model, time.time()])
        if summary and summary.strip().lower() != str(issue.get("title") or "").strip().lower():
            found[number] = summary
    return found


# ------------------------------------------------------------------------------------------ digest
def _week_settings(config: Mapping[str, Any]) -> tuple[str, int, str]:
    return str(config.get("day") or "monday"), int(config.get("hour") or 0), str(config.get("timezone") or "UTC")


def _previous_week(week: str) -> str:
    monday = date.fromisocalendar(int(week[:4]), int(week[6:]), 1) - timedelta(days=7)
    year, number, _ = monday.isocalendar()
    return f"{year}-W{number:02d}"


def render_input(data: DigestInput, config: Mapping[str, Any], week: str, as_of: datetime,
                 summary_by_issue: Mapping[int, str] | None = None) -> str:
    """The markdown for gathered inputs (pure: the same inputs give the same text)."""
    exclude = [str(label) for label in config.get("exclude_labels") or []] + [str(config.get("label") or "digest")]
    _day, _hour, tz = _week_settings(config)
    week_counts = core.counts(data.recent, data.start, data.end, exclude_labels=exclude)
    before = week_counts.previous
    previous = core.Counts(before.opened, before.closed_completed, before.closed_not_planned, before.closed_duplicate,
                           data.still_open_before) if before else None
    counts = core.Counts(week_counts.opened, week_counts.closed_completed, week_counts.closed_not_planned,
                         week_counts.closed_duplicate, data.still_open, previous)
    summary_by_issue = summary_by_issue or {}
    candidates = [{**issue, "summary": summary_by_issue[int(issue["number"])]}
                  if int(issue["number"]) in summary_by_issue else issue for issue in data.candidates]
    top = core.rank(candidates, as_of, top=int(config.get("top") or 10), exclude_labels=exclude)
    needs = core.needs_maintainer(data.needs_maintainer, data.comments_by_issue, data.write_logins,
                                  exclude_labels=exclude)
    daily = core.daily_opened_closed(data.recent, data.end, tz=tz, exclude_labels=exclude)
    return core.render(data.repo, week, counts, top, needs, data.waiting_on_authors, data.duplicates, daily,
                       bounds=(data.start, data.end))


async def build_digest(ctx, week: str | None = None, now: datetime | None = None) -> tuple[str, str, str]:
    """``(title, markdown, week label)`` of the digest for ``week`` (default: the latest finished one).

    Scores are taken at the window's end, so the scheduler, the CLI and ``/digest`` agree on a week's
    digest whenever they build it (only new reactions or comments since change it).
    """
    config = ctx.config.section("digest")
    day, hour, tz = _week_settings(config)
    now = now or datetime.now(timezone.utc)
    week = (week or core.latest_week(now, day, hour, tz)).strip().upper()
    start, end = core.week_bounds(week, day, hour, tz)
    label = core.week_label(start, end)
    bot_login = f"{ctx.settings.app_slug}[bot]"
    data = await gather(ctx.gh, ctx.repo, start, end, config, db=ctx.db, lifecycle=ctx.config.section("lifecycle"),
                        bot_login=bot_login, now=now)
    as_of = min(now, end)
    shown = core.rank(data.candidates, as_of, top=int(config.get("top") or 10),
                      exclude_labels=[*config.get("exclude_labels", []), config.get("label") or "digest"])
    summary_by_issue = await summaries(ctx.db, ctx.repo, ctx.models, [issue for issue, _ in shown])
    markdown = render_input(data, config, label, as_of, summary_by_issue)
    log.info("digest %s %s: %s", ctx.repo, label, data.stats, extra={"repo": ctx.repo})
    return core.title(start, end), markdown, label


def _last_week_key(repo: str) -> str:
    return f"digest:last_week:{repo}"


def _number_from(results: list[dict[str, Any]]) -> int | None:
    for result in results:
        if result.get("action") == "CreateIssue" and result.get("number"):
            return int(result["number"])
    return None


async def post_digest(ctx, week: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Post (or update) the digest issue for ``week`` and close the previous week's digest.

    Never twice for the same week: the issue carries ``marker('digest', week)`` and ``apply`` edits the
    bot's existing issue with that marker. A per-repository lock keeps a ``/digest`` and the scheduler
    from racing. Returns ``{"week", "title", "markdown", "number", "previous_closed", "results"}``.
    """
    lock = _LOCKS.setdefault((ctx.repo, id(asyncio.get_running_loop())), asyncio.Lock())
    async with lock:
        config = ctx.config.section("digest")
        title, markdown, label = await build_digest(ctx, week, now)
        digest_label = str(config.get("label") or "digest")
        week_marker = marker("digest", label)
        plan = Plan(reason=f"weekly digest {label}", data={"digest": label})
        plan.add(CreateLabel(digest_label, LABEL_COLOR, LABEL_DESCRIPTION))
        plan.add(CreateIssue(title, markdown, (digest_label,), marker=week_marker))
        results = await apply(plan, ctx)
        number = _number_from(results)
        latest = kv_get(ctx.db, _last_week_key(ctx.repo))
        is_latest = latest is None or label >= latest
        previous_closed = None
        if number is not None and is_latest and config.get("close_previous", True) and not ctx.dry_run:
            previous_closed = await _close_previous(ctx, label, number, digest_label)
        if number is not None and not ctx.dry_run and is_latest:
            kv_set(ctx.db, _last_week_key(ctx.repo), label)
        return {"week": label, "title": title, "markdown": markdown, "number": number,
                "previous_closed": previous_closed, "results": results}


async def _close_previous(ctx, week: str, number: int, digest_label: str) -> int | None:
    """Close last week's digest issue (if the bot posted one and it is open) with a link to ``#number``."""
    previous_week = _previous_week(week)
    previous = await find_marked_issue(ctx, marker("digest", previous_week), (digest_label,))
    if previous is None or int(previous["number"]) == number or previous.get("state") != "open":
        return None
    plan = Plan(reason=f"digest {week} replaces {previous_week}")
    plan.add(Comment(int(previous["number"]), render.fmt(NEXT_DIGEST_MESSAGE, ref=render.issue_ref(number)),
                     marker=marker("digest-next", previous_week)))
    plan.add(Close(int(previous["number"]), "completed"))
    await apply(plan, ctx)
    return int(previous["number"])


async def scheduled_digest(services, repo: str, installation_id: int, *, now: datetime | None = None) -> dict | None:
    """Called by the scheduler every few minutes: post the latest finished week's digest once.

    Due when ``digest.enabled`` and the configured week end (``day``, ``hour``, ``timezone``) has
    passed and that week is not the last one posted (``kv``). A server that was down simply finds
    the latest week due at start and posts it once; weeks missed in between are not back-filled.
    """
    now = now or datetime.now(timezone.utc)
    ctx = await services.context_for(repo, installation_id, f"digest-{int(now.timestamp())}")
    config = ctx.config.section("digest")
    if not config.get("enabled"):
        return None
    day, hour, tz = _week_settings(config)
    week = core.latest_week(now, day, hour, tz)
    last = kv_get(ctx.db, _last_week_key(repo))
    if last is not None and last >= week:
        return None
    log.info("digest %s: posting %s", repo, week, extra={"repo": repo})
    result = await post_digest(ctx, week, now)
    if ctx.dry_run:
        kv_set(ctx.db, _last_week_key(repo), result["week"])  # a dry run would otherwise retry every 10 minutes
    return result


# -------------------------------------------------------------------------------------------- CLI
async def digest_main(argv: list[str]) -> int:
    """`python -m bot digest OWNER/NAME [--week YYYY-Www] [--dry-run]`."""
    from bot.app import Services
    from bot.cli import ArgumentParser, repo_context, repo_name
    from bot.config import cli_settings

    parser = ArgumentParser(prog="python -m bot digest",
                            description="Print (--dry-run) or post the weekly digest of a repository.")
    parser.add_argument("repo", type=repo_name, help="OWNER/NAME")
    parser.add_argument("--week", help="ISO week like 2024-W10 (default: the latest finished week)")
    parser.add_argument("--dry-run", action="store_true", help="print the markdown; write nothing to GitHub")
    args = parser.parse_args(argv)
    if args.week:
        try:
            core.week_bounds(args.week)
        except ValueError as exc:
            parser.error(str(exc))
    settings = cli_settings("digest")
    if settings is None:
        return 2
    services = Services(settings)
    try:
        ctx = await repo_context(services, args.repo, "cli-digest", command="digest")
        if args.dry_run:
            _title, markdown, _label = await build_digest(ctx, args.week)
            print(markdown)
            return 0
        result = await post_digest(ctx, args.week)
    finally:
        await services.close()
    print(result["markdown"])
    if result["number"]:
        print(f"\nposted as https://github.com/{args.repo}/issues/{result['number']}"
              + (f"; closed #{result['previous_closed']}" if result["previous_closed"] else ""), file=sys.stderr)
    else:
        print("\nnot posted (dry run configured for this repository or server)", file=sys.stderr)
    return 0
