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

import importlib
import inspect
import logging
import re
import time
import weakref
from collections.abc import Iterable
from typing import Any, Callable

import cachetools
import gidgethub
from gidgethub.routing import Router

from bot import db as bot_db
from bot.actions import apply, audit, repo_labels
from bot.config import RepoConfig
from bot.context import Context
from bot.core.commands import (
    COMMANDS,
    WRITE_PERMISSIONS,
    Command,
    CommandOutcome,
    FeatureCall,
    decide,
    help_text,
    new_commands,
    parse,
    refusal_line,
    reply_body,
)
from bot.core import render
from bot.core.plan import Comment, React, marker

log = logging.getLogger(__name__)
router = Router()

PERMISSION_TTL = 60.0
"""Seconds a collaborator permission is trusted: long enough for one busy thread, short enough that
removing someone's access takes effect within a minute."""

SUMMARIZE_INTERVAL = 600.0
"""``/summarize`` runs at most once per issue in this many seconds (each run is a model call)."""

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
    await run_commands(ctx, issue, commands, actor=_actor(event, comment), comment_id=comment["id"])


@router.register("issue_comment", action="edited")
async def on_comment_edited(event, gh, ctx: Context) -> None:
    """Run only the commands an edit added, so re-saving a comment never repeats anything."""
    comment, issue = event.data["comment"], event.data["issue"]
    if issue.get("pull_request") or _is_bot(comment.get("user")):
        return
    body_change = (event.data.get("changes") or {}).get("body")
    if not body_change:
        return  # GitHub sends changes.body only when the text changed
    commands = new_commands(body_change.get("from"), comment.get("body") or "", bot_login(ctx))
    await run_commands(ctx, issue, commands, actor=_actor(event, comment), comment_id=comment["id"])


@router.register("issues", action="opened")
async def on_issue_opened(event, gh, ctx: Context) -> None:
    """Commands in a new issue's body run as the issue's author; feedback goes on the issue."""
    issue = event.data["issue"]
    if issue.get("pull_request") or _is_bot(issue.get("user")):
        return
    commands = parse(issue.get("body") or "", bot_login(ctx))
    actor = (issue.get("user") or {}).get("login") or ""
    await run_commands(ctx, issue, commands, actor=actor, comment_id=None)


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


def _summarize_key(ctx: Context, number: int) -> str:
    return f"commands:summarize:{ctx.repo}#{number}"


async def _run_call(ctx: Context, call: FeatureCall, number: int, actor: str) -> _CallResult:
    """Carry out one allowed feature command; never raises (a failure is reported, not retried)."""
    dry = "dry-run" if ctx.dry_run else "ok"
    if call.name in FLAG_COMMANDS:
        flag, on = FLAG_COMMANDS[call.name]
        if not ctx.dry_run:
            bot_db.set_flag(ctx.db, ctx.repo, number, flag, on, by=actor)
        return _CallResult(True, f"flag {flag} {'set' if on else 'cleared'}", dry)
    if call.name == "summarize":
        if bot_db.has_flag(ctx.db, ctx.repo, number, "no-ai"):
            why = render.fmt("is off on this issue: `/no-ai` stopped model-written text here")
            return _CallResult(False, "no-ai is set on this issue", "refused", why)
        last = bot_db.kv_get(ctx.db, _summarize_key(ctx, number))
        wait = SUMMARIZE_INTERVAL - (time.time() - float(last)) if last is not None else 0.0
        if wait > 0:
            minutes = max(1, round(wait / 60))
            why = f"ran less than {int(SUMMARIZE_INTERVAL // 60)} minutes ago; try again in about {minutes} min"
            return _CallResult(False, f"rate limited for {wait:.0f}s", "refused", why)
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
    if call.name == "summarize" and not ctx.dry_run:
        bot_db.kv_set(ctx.db, _summarize_key(ctx, number), time.time())
    return _CallResult(True, f"ran {FEATURE_FUNCTIONS[call.name][1]}", dry)


# --------------------------------------------------------------------------------------------------
# Running a comment's commands


async def run_commands(ctx: Context, issue: dict[str, Any], commands: list[Command], *, actor: str,
                       comment_id: int | None) -> CommandOutcome | None:
    """Decide and carry out ``commands`` typed by ``actor`` on ``issue``; returns the outcome (or None).

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
    names = {command.name for command in commands}
    permission = await actor_permission(ctx, actor)
    labels = await repo_labels(ctx) if names & _LABEL_COMMANDS else set()
    bot_closed = "reopen" in names and issue.get("state") == "closed" and await closed_by_bot(ctx, number)
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
        results[id(call.command)] = await _run_call(ctx, call, number, actor)
    late = [(call.command, results[id(call.command)]) for call in outcome.calls if results[id(call.command)].reply]
    if late:
        _add_refusals(outcome, number, actor, comment_id,
                      [refusal_line(command, result.reply or "") for command, result in late],
                      help_text(config, features, login))
        ran = sum(1 for verdict in outcome.verdicts
                  if verdict.allowed and (id(verdict.command) not in results or results[id(verdict.command)].ok))
        if not ran:
            outcome.plan.actions = [action for action in outcome.plan.actions if not isinstance(action, React)]
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
            "comment_id": comment_id,
        }, result)
    log.info("commands on %s#%s by %s: %s", ctx.repo, number, actor, outcome.plan.reason, extra=extra)
    if outcome.plan:
        await apply(outcome.plan, ctx)
    return outcome


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
