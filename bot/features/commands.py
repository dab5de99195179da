"""Slash commands from issue comments and new issue bodies: fetch what the core needs, run, reply.

``bot.core.commands`` decides (pure); this module gathers its inputs from GitHub (the actor's
permission, the repository's labels, whether ``#N`` exists, who can be assigned, whether the bot
closed the issue), carries out the commands that belong to other features, writes one audit row
per command and hands the plan to ``bot.actions.apply``.

Other features are looked up when a command needs them (``bot.features.triage.run_triage`` and so
on), so a command whose feature has not landed, or is switched off in the repository's config,
answers "is not enabled here" instead of pretending. ``/freeze``, ``/unfreeze`` and ``/no-ai`` only
set per-issue flags in the database, so they live here.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import json
import re
import weakref
from collections.abc import Iterable
from typing import Any, Callable

import cachetools
import gidgethub
from gidgethub.routing import Router

from bot import db as bot_db
from bot import limits
from bot.actions import apply, audit, repo_labels
from bot.config import RepoConfig
from bot.context import Context
from bot.core.commands import (
    COMMANDS,
    WRITE_PERMISSIONS,
    Command,
    CommandOutcome,
    FeatureCall,
    author_may_reopen,
    decide,
    help_text,
    new_commands,
    parse,
    refusal_line,
    reply_body,
    who_closed,
)
from bot.core import render
from bot.core.plan import Comment, Plan, React, marker

log = logging.getLogger(__name__)
router = Router()

PERMISSION_TTL = 60.0
"""Seconds a collaborator permission is trusted: long enough for one busy thread, short enough that
removing someone's access takes effect within a minute."""

PER_ISSUE_INTERVAL = 600.0
"""``/triage`` and ``/summarize`` each run at most once per issue in this many seconds (each run may be a
paid fallback call)."""
SUMMARIZE_INTERVAL = PER_ISSUE_INTERVAL  # the name this limit had before /triage shared it

PER_USER_LIMIT = 6
PER_USER_WINDOW = 3600.0
"""Someone without write access may run ``/triage`` and ``/summarize`` (together, on any issue of any
repository this server serves) at most this many times per window."""

REPLY_WINDOW = 3600.0
"""Someone without write access gets at most one reply (refusals, ``/help``) per issue in this many seconds;
later ones are audited but not answered, so a flood of refused commands cannot make the bot post a flood."""

PAID_COMMANDS = frozenset({"triage", "summarize"})
"""Feature commands that may end in a model call the operator pays for."""

FEATURE_FUNCTIONS: dict[str, tuple[str, str]] = {
    "triage": ("bot.features.triage", "run_triage"),
    "summarize": ("bot.features.triage", "summarize"),
    "needs-info": ("bot.features.lifecycle", "start_needs_info"),
    "info-provided": ("bot.features.lifecycle", "stop_needs_info"),
    "digest": ("bot.features.digest", "post_digest"),
}
"""Command -> (module, function) of the feature that carries it out; missing means not enabled."""

FLAG_COMMANDS: dict[str, tuple[str, bool]] = {
    "freeze": ("frozen", True),
    "unfreeze": ("frozen", False),
    "no-ai": ("no-ai", True),
}
"""Commands that only switch a per-issue flag (``bot.db.set_flag``); always available."""

_LOGIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_ISSUE_REF = re.compile(r"^#?(\d{1,10})$")  # what /duplicate accepts (the core validates it again)
_LABEL_COMMANDS = frozenset({"label", "unlabel", "duplicate"})

# Permission caches live as long as the server (Services) that made them, so tests and CLI runs with
# their own Services never see each other's answers.
_permission_caches: "weakref.WeakKeyDictionary[Any, cachetools.TTLCache]" = weakref.WeakKeyDictionary()


def bot_login(ctx: Context) -> str:
    """The App's user login, as it appears on its comments and events."""
    return f"{ctx.settings.app_slug}[bot]"


def _is_bot(user: dict[str, Any] | None) -> bool:
    return bool(user) and (user.get("type") == "Bot" or (user.get("login") or "").lower().endswith("[bot]"))


# --------------------------------------------------------------------------------------------------
# Webhook handlers


@router.register("issue_comment", action="created")
async def on_comment_created(event, gh, ctx: Context) -> None:
    """Run the commands in a new comment on an issue (pull requests are left to other bots)."""
    comment, issue = event.data["comment"], event.data["issue"]
    if issue.get("pull_request") or _is_bot(comment.get("user")):
        return
    commands = parse(comment.get("body") or "", bot_login(ctx))
    await run_commands(ctx, issue, commands, actor=_actor(event, comment), comment_id=comment["id"],
                       claim=(f"comment:{comment['id']}", "created"))


@router.register("issue_comment", action="edited")
async def on_comment_edited(event, gh, ctx: Context) -> None:
    """Run only the commands an edit added, so re-saving a comment never repeats anything."""
    comment, issue = event.data["comment"], event.data["issue"]
    if issue.get("pull_request") or _is_bot(comment.get("user")):
        return
    body_change = (event.data.get("changes") or {}).get("body")
    if not body_change:
        return  # GitHub sends changes.body only when the text changed
    body = comment.get("body") or ""
    commands = new_commands(body_change.get("from"), body, bot_login(ctx))
    # One edit is one version: GitHub stamps it with updated_at; the body hash tells apart two edits
    # within the same second. A replayed edit finds its version claimed and runs nothing.
    version = f"edit:{comment.get('updated_at') or ''}:{hashlib.sha256(body.encode()).hexdigest()[:16]}"
    await run_commands(ctx, issue, commands, actor=_actor(event, comment), comment_id=comment["id"],
                       claim=(f"comment:{comment['id']}", version))


@router.register("issues", action="opened")
async def on_issue_opened(event, gh, ctx: Context) -> None:
    """Commands in a new issue's body run as the issue's author; feedback goes on the issue."""
    issue = event.data["issue"]
    if issue.get("pull_request") or _is_bot(issue.get("user")):
        return
    commands = parse(issue.get("body") or "", bot_login(ctx))
    actor = (issue.get("user") or {}).get("login") or ""
    await run_commands(ctx, issue, commands, actor=actor, comment_id=None,
                       claim=(f"issue:{issue['number']}", "opened"))


def _actor(event, comment: dict[str, Any]) -> str:
    """Who typed the commands: on an edit that is the editor (``sender``), not the comment's author."""
    sender = (event.data.get("sender") or {}).get("login")
    return sender or (comment.get("user") or {}).get("login") or ""


# --------------------------------------------------------------------------------------------------
# Inputs from GitHub


async def actor_permission(ctx: Context, login: str) -> str:
    """The actor's permission on the repo (``admin``, ``maintain``, ``write``, ... or ``none``), cached."""
    owner = ctx.services if ctx.services is not None else ctx.db
    try:
        cache = _permission_caches.setdefault(owner, cachetools.TTLCache(maxsize=4096, ttl=PERMISSION_TTL))
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    key = (ctx.repo, login.lower())
    if key in cache:
        return cache[key]
    permission = "none"
    if _LOGIN.match(login.removesuffix("[bot]")):
        try:
            data = await ctx.gh.getitem(ctx.url(f"/collaborators/{login}/permission"))
        except gidgethub.BadRequest as exc:
            if exc.status_code != 404:
                raise
        else:
            # `role_name` tells maintain from write; custom roles only show in the legacy `permission`.
            role = str(data.get("role_name") or "").lower()
            permission = role if role in WRITE_PERMISSIONS else str(data.get("permission") or "none").lower()
    cache[key] = permission
    return permission


async def issue_exists(ctx: Context, number: int) -> bool:
    """Is ``#number`` an issue (not a pull request) of this repository?"""
    try:
        found = await ctx.gh.getitem(ctx.url(f"/issues/{number}"))
    except gidgethub.BadRequest as exc:
        if exc.status_code in (404, 410):  # never existed / deleted
            return False
        raise
    except gidgethub.RedirectionException:  # transferred to another repository
        return False
    return isinstance(found, dict) and not found.get("pull_request")


async def can_be_assigned(ctx: Context, login: str) -> bool:
    """GitHub answers 204 when ``login`` may be assigned to this repository's issues, 404 when not."""
    try:
        await ctx.gh.getitem(ctx.url(f"/assignees/{login}"))
    except gidgethub.BadRequest as exc:
        if exc.status_code == 404:
            return False
        raise
    return True


def _same_login(first: str, second: str) -> bool:
    def base(login: str) -> str:
        return login.strip().lstrip("@").lower().removesuffix("[bot]")

    return base(first) == base(second)


async def closed_by_bot(ctx: Context, number: int) -> bool:
    """Did the bot close this issue last? The issue's events say; the audit log answers if they can't."""
    last_close: dict[str, Any] | None = None
    try:
        async for event in ctx.gh.getiter(ctx.url(f"/issues/{number}/events") + "?per_page=100"):
            if event.get("event") == "closed":
                last_close = event
    except gidgethub.BadRequest as exc:
        log.warning("events of %s#%s unreadable (%s); using the audit log", ctx.repo, number, exc,
                    extra={"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": number})
    if last_close is not None:
        return _same_login((last_close.get("actor") or {}).get("login") or "", bot_login(ctx))
    row = ctx.db.execute("SELECT 1 FROM audit WHERE repo = ? AND issue = ? AND action = 'Close' AND result = 'ok' "
                         "LIMIT 1", [ctx.repo, number]).fetchone()
    return row is not None


def _audit_close_requester(ctx: Context, number: int) -> tuple[bool, str | None]:
    """(Has the bot recorded a close of this issue?, who ran the command behind the latest one, if any).

    The ``command`` audit rows of the delivery that closed the issue name who asked for it; a close with
    no ``/close`` or ``/duplicate`` in its delivery was the bot's own (the lifecycle)."""
    row = ctx.db.execute("SELECT delivery_id FROM audit WHERE repo = ? AND issue = ? AND action = 'Close' "
                         "AND result = 'ok' ORDER BY id DESC LIMIT 1", [ctx.repo, number]).fetchone()
    if row is None:
        return False, None
    for (details,) in ctx.db.execute("SELECT details FROM audit WHERE repo = ? AND issue = ? AND delivery_id = ? "
                                     "AND action = 'command' ORDER BY id DESC", [ctx.repo, number, row[0]]):
        try:
            data = json.loads(details)
        except ValueError:
            continue
        if data.get("name") in ("close", "duplicate") and data.get("allowed") and data.get("actor"):
            return True, str(data["actor"])
    return True, None


async def close_decider(ctx: Context, number: int) -> str | None:
    """Who decided the last close of ``number``: a login, ``LIFECYCLE`` or ``None`` (see ``who_closed``)."""
    events: list[dict[str, Any]] = []
    comments: list[dict[str, Any]] = []
    extra = {"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": number}
    try:
        async for event in ctx.gh.getiter(ctx.url(f"/issues/{number}/events") + "?per_page=100"):
            events.append(event)
    except gidgethub.BadRequest as exc:
        log.warning("events of %s#%s unreadable (%s); using the audit log", ctx.repo, number, exc, extra=extra)
    has_close, requester = _audit_close_requester(ctx, number)
    last_close = next((e for e in reversed(events) if e.get("event") == "closed"), None)
    if last_close is not None and requester is None \
            and _same_login((last_close.get("actor") or {}).get("login") or "", bot_login(ctx)):
        # Only then do the comments matter: is the lifecycle's close comment there?
        async for comment in ctx.gh.getiter(ctx.url(f"/issues/{number}/comments") + "?per_page=100"):
            if _is_bot(comment.get("user")):
                comments.append(comment)
    return who_closed(events, comments, bot_login=bot_login(ctx), audit_requester=requester,
                      audit_has_close=has_close)


# --------------------------------------------------------------------------------------------------
# Features


def feature_function(name: str) -> Callable[..., Any] | None:
    """The function carrying out feature command ``name``, or ``None`` if its feature is not there."""
    module_name, attribute = FEATURE_FUNCTIONS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    return getattr(module, attribute, None)


def enabled_features(config: RepoConfig) -> set[str]:
    """Feature commands this repository can run: the feature exists and its config section is on."""
    def section(name: str) -> dict[str, Any]:
        try:
            return config.section(name) or {}
        except KeyError:
            return {}

    needs_info_on = bool((section("lifecycle").get("needs_info") or {}).get("enabled", True))
    gates = {
        "triage": bool(section("triage").get("enabled", True)),
        "summarize": True,
        "needs-info": needs_info_on,
        "info-provided": needs_info_on,
        "digest": bool(section("digest").get("enabled", False)),
    }
    enabled = set(FLAG_COMMANDS)
    enabled.update(name for name, on in gates.items() if on and feature_function(name) is not None)
    return enabled


class _CallResult:
    """What running one feature call came to; ``reply`` is set when the actor must be told why not."""

    __slots__ = ("ok", "reason", "result", "reply")

    def __init__(self, ok: bool, reason: str, result: str, reply: str | render.Safe | None = None) -> None:
        self.ok, self.reason, self.result, self.reply = ok, reason, result, reply


def _minutes(seconds: float) -> int:
    return max(1, round(seconds / 60))


def _paid_limits(ctx: Context, name: str, number: int, actor: str, is_write: bool) -> list[limits.Limit]:
    """The limits a paid command takes from: once per issue per interval; per user unless write access."""
    taken = [limits.Limit(f"command:{name}:{ctx.repo}#{number}", 1, PER_ISSUE_INTERVAL)]
    if not is_write:
        taken.append(limits.Limit(f"command:paid-by:{actor.lower()}", PER_USER_LIMIT, PER_USER_WINDOW))
    return taken


def _rate_limited(ctx: Context, name: str, number: int, actor: str, is_write: bool) -> _CallResult | None:
    """Take ``/triage`` or ``/summarize``'s slots; a refusal (one polite line, no model call) if full."""
    refused = limits.take(ctx.db, _paid_limits(ctx, name, number, actor, is_write))
    if refused is None:
        return None
    wait = refused.retry_after
    if refused.limit.key.startswith("command:paid-by:"):
        why = render.fmt("was not run: `/triage` and `/summarize` together run at most {limit} times an hour "
                         "per person; try again in about {minutes} min",
                         limit=PER_USER_LIMIT, minutes=_minutes(wait))
    else:
        why = render.fmt("ran less than {interval} minutes ago on this issue; try again in about {minutes} min",
                         interval=int(PER_ISSUE_INTERVAL // 60), minutes=_minutes(wait))
    return _CallResult(False, f"rate limited ({refused.limit.key}) for {wait:.0f}s", "refused", why)


async def _run_call(ctx: Context, call: FeatureCall, number: int, actor: str, is_write: bool = False) -> _CallResult:
    """Carry out one allowed feature command; never raises (a failure is reported, not retried)."""
    dry = "dry-run" if ctx.dry_run else "ok"
    if call.name in FLAG_COMMANDS:
        flag, on = FLAG_COMMANDS[call.name]
        if not ctx.dry_run:
            bot_db.set_flag(ctx.db, ctx.repo, number, flag, on, by=actor)
        return _CallResult(True, f"flag {flag} {'set' if on else 'cleared'}", dry)
    if call.name == "summarize" and bot_db.has_flag(ctx.db, ctx.repo, number, "no-ai"):
        why = render.fmt("is off on this issue: `/no-ai` stopped model-written text here")
        return _CallResult(False, "no-ai is set on this issue", "refused", why)
    if call.name in PAID_COMMANDS and feature_function(call.name) is not None:
        # Taken before the call, also in dry run (the model still runs there): spend is what is limited.
        limited = _rate_limited(ctx, call.name, number, actor, is_write)
        if limited is not None:
            return limited
    function = feature_function(call.name)
    if function is None:  # vanished since enabled_features was computed (a reload); say so
        return _CallResult(False, "feature not present", "refused", "is not enabled here")
    arguments: tuple[Any, ...] = (ctx,) if call.name == "digest" else (ctx, number)
    keywords: dict[str, Any] = {}
    if call.name == "triage":
        keywords = {"actor": actor, "rerun": True}
    elif call.name == "needs-info":
        arguments += (" ".join(call.args), actor)
    elif call.name == "info-provided":
        arguments += (actor,)
    try:
        result = function(*arguments, **keywords)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:  # noqa: BLE001 - one failed feature must not cost the other commands
        log.exception("/%s failed on %s#%s", call.name, ctx.repo, number,
                      extra={"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": number})
        return _CallResult(False, f"{type(exc).__name__}: {exc}", "error",
                           "failed; the error is in the bot's log")
    return _CallResult(True, f"ran {FEATURE_FUNCTIONS[call.name][1]}", dry)


# --------------------------------------------------------------------------------------------------
# Running a comment's commands


async def run_commands(ctx: Context, issue: dict[str, Any], commands: list[Command], *, actor: str,
                       comment_id: int | None, claim: tuple[str, str] | None = None) -> CommandOutcome | None:
    """Decide and carry out ``commands`` typed by ``actor`` on ``issue``; returns the outcome (or None).

    ``claim`` is ``(source, version)`` of the text the commands came from (``comment:ID``, ``created`` or
    one edit): its commands run for the first delivery that claims it, and again only when that same
    delivery is retried; the same body re-sent under a new delivery id runs nothing.
    Feature calls run before the plan is applied, so the 👍 reaction that ends the plan means done.
    """
    config = ctx.config.section("commands")
    login = bot_login(ctx)
    if not commands or not config.get("enabled", True) or not actor or _same_login(actor, login):
        return None
    if not any(command.name in COMMANDS or command.addressed for command in commands):
        return None  # other bots' commands: not ours to answer, not worth an API call
    number = int(issue["number"])
    extra = {"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": number}
    if claim is not None:
        holder = limits.claim(ctx.db, ctx.repo, claim[0], claim[1], ctx.delivery_id or "")
        if holder != (ctx.delivery_id or ""):
            log.info("commands of %s (%s) on %s#%s were run by delivery %s; not again", claim[0], claim[1][:40],
                     ctx.repo, number, holder, extra=extra)
            return None
    names = {command.name for command in commands}
    permission = await actor_permission(ctx, actor)
    is_write = permission in WRITE_PERMISSIONS
    labels = await repo_labels(ctx) if names & _LABEL_COMMANDS else set()
    author = (issue.get("user") or {}).get("login") or ""
    # `bot_closed` tells the core the author may reopen: only the bot's own (lifecycle) close, or one the
    # author asked for, never a maintainer's /close or /duplicate (the bot is GitHub's closer for all).
    bot_closed = ("reopen" in names and issue.get("state") == "closed" and not is_write
                  and _same_login(actor, author)
                  and author_may_reopen(await close_decider(ctx, number), author))
    existing = await _existing_issues(ctx, commands, number)
    assignable = await _assignable(ctx, commands, actor, permission)
    features = enabled_features(ctx.config)
    outcome = decide(
        commands, actor=actor, actor_permission=permission, issue=issue, repo_labels=labels, config=config,
        enabled_features=features, bot_closed=bot_closed, comment_id=comment_id, issue_exists=existing,
        can_be_assigned=assignable, bot_login=login,
    )
    results: dict[int, _CallResult] = {}
    for call in outcome.calls:
        results[id(call.command)] = await _run_call(ctx, call, number, actor, is_write)
    late = [(call.command, results[id(call.command)]) for call in outcome.calls if results[id(call.command)].reply]
    if late:
        _add_refusals(outcome, number, actor, comment_id,
                      [refusal_line(command, result.reply or "") for command, result in late],
                      help_text(config, features, login))
        ran = sum(1 for verdict in outcome.verdicts
                  if verdict.allowed and (id(verdict.command) not in results or results[id(verdict.command)].ok))
        if not ran:
            outcome.plan.actions = [action for action in outcome.plan.actions if not isinstance(action, React)]
    reply_state = _limit_reply(ctx, outcome.plan, number, actor, comment_id, is_write)
    for verdict in outcome.verdicts:
        called = results.get(id(verdict.command))
        allowed = verdict.allowed and (called is None or called.ok)
        if called is not None:
            result, reason = called.result, called.reason
        else:
            result = "refused" if not allowed else "dry-run" if ctx.dry_run else "ok"
            reason = verdict.reason
        audit(ctx, "command", number, {
            "command": verdict.command.line, "name": verdict.command.name, "args": list(verdict.command.args),
            "actor": actor, "permission": permission, "allowed": allowed, "reason": reason,
            "comment_id": comment_id, **({"reply": reply_state} if reply_state else {}),
        }, result)
    log.info("commands on %s#%s by %s: %s", ctx.repo, number, actor, outcome.plan.reason, extra=extra)
    if outcome.plan:
        await apply(outcome.plan, ctx)
    return outcome


def _limit_reply(ctx: Context, plan: Plan, number: int, actor: str, comment_id: int | None,
                 is_write: bool) -> str | None:
    """At most one reply per person without write access per issue per ``REPLY_WINDOW``.

    Returns ``None`` when the plan has no reply, ``"posted"`` when it keeps it, ``"suppressed"`` when the
    reply was dropped (the commands' audit rows say so; nothing is written to GitHub for it)."""
    reply_marker = marker("reply", comment_id if comment_id is not None else f"issue-{number}")
    index = next((i for i, action in enumerate(plan.actions)
                  if isinstance(action, Comment) and action.marker == reply_marker), None)
    if index is None:
        return None
    if is_write:
        return "posted"
    refused = limits.take(ctx.db, [limits.Limit(f"reply:{ctx.repo}#{number}:{actor.lower()}", 1, REPLY_WINDOW)])
    if refused is None:
        return "posted"
    del plan.actions[index]
    log.info("reply to %s on %s#%s suppressed: replied within the last %d min", actor, ctx.repo, number,
             int(REPLY_WINDOW // 60), extra={"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": number})
    return "suppressed"


async def _existing_issues(ctx: Context, commands: Iterable[Command], number: int) -> set[int]:
    """The ``/duplicate #N`` targets that are issues of this repository."""
    found: set[int] = set()
    for command in commands:
        if command.name != "duplicate" or len(command.args) != 1:
            continue
        match = _ISSUE_REF.match(command.args[0])
        if match is None:
            continue
        target = int(match.group(1))
        if 0 < target != number and target not in found and await issue_exists(ctx, target):
            found.add(target)
    return found


async def _assignable(ctx: Context, commands: Iterable[Command], actor: str, permission: str) -> set[str]:
    """The ``/assign`` targets GitHub lets be assigned (only those the actor may assign are checked)."""
    is_write = permission in WRITE_PERMISSIONS
    checked: dict[str, bool] = {}
    for command in commands:
        if command.name != "assign":
            continue
        for raw in command.args or ("me",):
            login = actor if raw.lower() in ("me", "@me") else raw.lstrip("@")
            if not _LOGIN.match(login) or login in checked or not (is_write or login.lower() == actor.lower()):
                continue
            checked[login] = await can_be_assigned(ctx, login)
    return {login for login, ok in checked.items() if ok}


def _add_refusals(outcome: CommandOutcome, number: int, actor: str, comment_id: int | None,
                  lines: list[render.Safe], help_block: render.Safe) -> None:
    """Fold refusals found while running feature calls into the core's ONE reply, in its format."""
    plan = outcome.plan
    reply_marker = marker("reply", comment_id if comment_id is not None else f"issue-{number}")
    index = next((i for i, action in enumerate(plan.actions)
                  if isinstance(action, Comment) and action.marker == reply_marker), None)
    outcome.refusals.extend(lines)
    reply = Comment(number, reply_body(actor, outcome.refusals, help_block if outcome.want_help else None),
                    marker=reply_marker)
    if index is not None:
        plan.actions[index] = reply
        return
    react_at = next((i for i, action in enumerate(plan.actions) if isinstance(action, React)), len(plan.actions))
    plan.actions.insert(react_at, reply)
