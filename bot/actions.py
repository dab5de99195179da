"""The only code that writes to GitHub: ``apply(plan, ctx)``.

Everything the bot does to a repository passes through here, so this is where dry run is honoured,
where every write (or would-be write) lands in the audit log, and where idempotency lives: a comment
with a hidden marker edits the bot's earlier comment instead of posting a second one, labels that do
not exist in the repository are never created by accident, and a closed issue is not closed twice.

It is also the gate for every text the bot posts (comment bodies, issue titles and bodies): a text
that is not ``render.Safe`` is refused, and so is one whose GitHub rendering (``render_check``) holds
a mention of anyone the template did not mean to mention, an image, raw HTML, a link out of the
repository or a cross-repository reference. A refused action is logged and audited as ``error`` and
not posted; it is not retried (the same plan would be refused again), and the rest of the plan runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any
from urllib.parse import quote

import gidgethub

from bot.context import Context
from bot.core import plan as p
from bot.core import render, render_check

log = logging.getLogger(__name__)


def audit(ctx: Context, action: str, issue: int | None, details: dict[str, Any], result: str) -> None:
    """One row in the audit log; never raises into the caller's write path."""
    ctx.db["audit"].insert({
        "ts": time.time(), "delivery_id": ctx.delivery_id, "repo": ctx.repo, "issue": issue,
        "action": action, "details": json.dumps(details, default=str), "result": result,
    })


async def repo_labels(ctx: Context) -> set[str]:
    """The repository's label names (cached on the context for one delivery)."""
    cache = getattr(ctx, "_labels", None)
    if cache is None:
        cache = set()
        async for label in ctx.gh.getiter(ctx.url("/labels") + "?per_page=100"):
            cache.add(label["name"])
        ctx._labels = cache  # type: ignore[attr-defined]
    return cache


async def find_marked_comment(ctx: Context, issue: int, marker: str) -> dict | None:
    """The bot's own comment on ``issue`` that carries ``marker``, if any."""
    async for comment in ctx.gh.getiter(ctx.url(f"/issues/{issue}/comments") + "?per_page=100"):
        user = comment.get("user") or {}
        if user.get("type") == "Bot" and marker in (comment.get("body") or ""):
            return comment
    return None


def _details(action: p.Action) -> dict[str, Any]:
    data = dataclasses.asdict(action)
    data.pop("issue", None)
    if "body" in data and data["body"] and len(data["body"]) > 2000:
        data["body"] = data["body"][:2000] + "…"
    return data


def posted_text(action: p.Action) -> dict[str, Any]:
    """The texts ``action`` would post, final form (marker appended), keyed ``body`` / ``title``."""
    if isinstance(action, p.Comment):
        body = action.body
        if action.marker and isinstance(body, render.Safe):
            body = render.with_marker(body, action.marker)
        return {"body": body}
    if isinstance(action, p.CreateIssue):
        body = action.body
        if action.marker and isinstance(body, render.Safe):
            body = render.with_marker(body, action.marker)
        return {"title": action.title, "body": body}
    if isinstance(action, p.EditIssueBody):
        return {"body": action.body}
    return {}


def refusal(action: p.Action, repo: str) -> list[str]:
    """Why ``action`` must not be posted (empty when it may): not ``Safe``, or unsafe once rendered."""
    found: list[str] = []
    try:
        texts = posted_text(action)
    except ValueError as exc:  # a marker that is not one of ours
        return [str(exc)]
    for name, value in texts.items():
        if not isinstance(value, render.Safe):
            found.append(f"{name} is {type(value).__name__}, not built by bot.core.render")
            continue
        try:
            if name == "title":
                found += [f"title: {problem}" for problem in render_check.title_problems(value, repo=repo)]
            else:
                found += render_check.problems(value, author=value.mentions, repo=repo)
        except ValueError as exc:
            found.append(f"{name}: {exc}")
    return found


async def apply(plan: p.Plan, ctx: Context) -> list[dict[str, Any]]:
    """Carry out ``plan`` in order; returns one result per action (also written to the audit log).

    An action that fails is logged and audited as ``error`` and the rest of the plan still runs, so one
    missing permission does not cost the whole response; the first error is re-raised at the end so
    the queue retries the delivery (markers keep the retry from repeating what already succeeded).
    """
    results: list[dict[str, Any]] = []
    first_error: Exception | None = None
    for action in plan.actions:
        name = type(action).__name__
        issue = getattr(action, "issue", None)
        details = _details(action)
        refused = refusal(action, ctx.repo)
        if refused:
            # A bug in a template or a new code path, never the user's fault: loud in the log, no post.
            log.error("refused to post %s on %s#%s: %s", name, ctx.repo, issue, "; ".join(refused),
                      extra={"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": issue})
            audit(ctx, name, issue, {**details, "refused": refused}, "error")
            results.append({"action": name, "issue": issue, "result": "error", "refused": refused})
            continue
        if ctx.dry_run:
            audit(ctx, name, issue, details, "dry-run")
            results.append({"action": name, "issue": issue, "result": "dry-run"})
            continue
        try:
            outcome = await _apply_one(action, ctx)
        except gidgethub.HTTPException as exc:
            log.error("write failed: %s on %s#%s: %s", name, ctx.repo, issue, exc,
                      extra={"delivery": ctx.delivery_id})
            audit(ctx, name, issue, {**details, "error": str(exc)}, "error")
            results.append({"action": name, "issue": issue, "result": "error", "error": str(exc)})
            first_error = first_error or exc
            continue
        details.update(outcome or {})
        result = "skipped" if outcome and outcome.get("skipped") else "ok"
        audit(ctx, name, issue, details, result)
        results.append({"action": name, "issue": issue, "result": result, **(outcome or {})})
    if first_error is not None:
        raise first_error
    return results


async def _apply_one(action: p.Action, ctx: Context) -> dict[str, Any] | None:
    gh = ctx.gh
    if isinstance(action, p.Comment):
        body = posted_text(action)["body"]
        if action.marker:
            existing = await find_marked_comment(ctx, action.issue, action.marker)
            if existing is not None:
                if existing.get("body") == body:
                    return {"skipped": "unchanged", "comment_id": existing["id"]}
                await gh.patch(ctx.url(f"/issues/comments/{existing['id']}"), data={"body": body})
                return {"edited": existing["id"], "comment_id": existing["id"]}
        created = await gh.post(ctx.url(f"/issues/{action.issue}/comments"), data={"body": body})
        return {"comment_id": created["id"]}
    if isinstance(action, p.AddLabels):
        existing_labels = await repo_labels(ctx)
        wanted = [label for label in action.labels if label in existing_labels]
        missing = [label for label in action.labels if label not in existing_labels]
        if not wanted:
            return {"skipped": "labels do not exist in the repository", "missing": missing}
        await gh.post(ctx.url(f"/issues/{action.issue}/labels"), data={"labels": wanted})
        return {"applied": wanted, "missing": missing}
    if isinstance(action, p.RemoveLabel):
        try:
            await gh.delete(ctx.url(f"/issues/{action.issue}/labels/{quote(action.label, safe='')}"))
        except gidgethub.BadRequest as exc:
            if exc.status_code == 404:
                return {"skipped": "label not on the issue"}
            raise
        return None
    if isinstance(action, p.CreateLabel):
        if action.name in await repo_labels(ctx):
            return {"skipped": "exists"}
        await gh.post(ctx.url("/labels"), data={"name": action.name, "color": action.color,
                                                 "description": action.description})
        ctx._labels.add(action.name)  # type: ignore[attr-defined]
        return None
    if isinstance(action, p.Close):
        current = await gh.getitem(ctx.url(f"/issues/{action.issue}"))
        if current.get("state") == "closed":
            return {"skipped": "already closed"}
        await gh.patch(ctx.url(f"/issues/{action.issue}"),
                       data={"state": "closed", "state_reason": action.state_reason})
        return None
    if isinstance(action, p.Reopen):
        current = await gh.getitem(ctx.url(f"/issues/{action.issue}"))
        if current.get("state") == "open":
            return {"skipped": "already open"}
        await gh.patch(ctx.url(f"/issues/{action.issue}"), data={"state": "open", "state_reason": "reopened"})
        return None
    if isinstance(action, p.Assign):
        await gh.post(ctx.url(f"/issues/{action.issue}/assignees"), data={"assignees": list(action.assignees)})
        return None
    if isinstance(action, p.Unassign):
        await gh.delete(ctx.url(f"/issues/{action.issue}/assignees"), data={"assignees": list(action.assignees)})
        return None
    if isinstance(action, p.React):
        if action.comment_id is not None:
            url = ctx.url(f"/issues/comments/{action.comment_id}/reactions")
        else:
            url = ctx.url(f"/issues/{action.issue}/reactions")
        await gh.post(url, data={"content": action.content})
        return None
    if isinstance(action, p.EditIssueBody):
        await gh.patch(ctx.url(f"/issues/{action.issue}"), data={"body": action.body})
        return None
    if isinstance(action, p.CreateIssue):
        body = posted_text(action)["body"]
        if action.marker:
            existing = await find_marked_issue(ctx, action.marker, action.labels)
            if existing is not None:
                if existing.get("body") != body or existing.get("title") != action.title:
                    await gh.patch(ctx.url(f"/issues/{existing['number']}"),
                                   data={"title": action.title, "body": body})
                    return {"edited_issue": existing["number"], "number": existing["number"]}
                return {"skipped": "unchanged", "number": existing["number"]}
        labels = [label for label in action.labels if label in await repo_labels(ctx)]
        created = await gh.post(ctx.url("/issues"), data={"title": action.title, "body": body, "labels": labels})
        return {"number": created["number"]}
    raise TypeError(f"unknown action {action!r}")


async def find_marked_issue(ctx: Context, marker: str, labels: tuple[str, ...] = ()) -> dict | None:
    """The bot's own issue carrying ``marker``: the audit log names it; the issue body confirms it."""
    rows = ctx.db.execute(
        "SELECT details FROM audit WHERE repo = ? AND action = 'CreateIssue' AND result IN ('ok', 'skipped') "
        "ORDER BY id DESC", [ctx.repo]).fetchall()
    for (details,) in rows:
        data = json.loads(details)
        if marker in (data.get("marker") or "") and data.get("number"):
            try:
                issue = await ctx.gh.getitem(ctx.url(f"/issues/{data['number']}"))
            except gidgethub.BadRequest:
                continue
            if marker in (issue.get("body") or ""):
                return issue
    query = "?state=all&per_page=100" + (f"&labels={quote(labels[0])}" if labels else "")
    async for issue in ctx.gh.getiter(ctx.url("/issues") + query):
        if (issue.get("user") or {}).get("type") == "Bot" and marker in (issue.get("body") or ""):
            return issue
    return None


async def redeliver_webhook(gh, *, jwt: str, db, delivery: dict[str, Any], dry_run: bool,
                            run_id: str) -> dict[str, Any]:
    """Ask GitHub to send one of the App's failed webhook deliveries again (``bot.features.recovery``).

    ``delivery`` is a hook-delivery item from ``GET /app/hook/deliveries``; its numeric ``id`` names the
    try to repeat, and GitHub sends it with the same ``guid`` (``X-GitHub-Delivery``), so the queue
    treats it as the delivery it missed. App-level, so authenticated with the App's JWT (no
    installation token can do this). Audited (action ``Redeliver``, no repository) and honours dry run
    like every write. Returns ``{"result": "ok" | "dry-run" | "error", ...}``; never raises for an
    HTTP error, which is logged and audited instead: the caller moves on to the next delivery.
    """
    details = {"hook_delivery_id": delivery.get("id"), "guid": delivery.get("guid"),
               "event": delivery.get("event"), "action": delivery.get("action"),
               "delivered_at": delivery.get("delivered_at"), "status": str(delivery.get("status") or "")[:200],
               "status_code": delivery.get("status_code")}

    def record(result: str, extra: dict[str, Any] | None = None) -> None:
        db["audit"].insert({"ts": time.time(), "delivery_id": run_id, "repo": None, "issue": None,
                            "action": "Redeliver", "details": json.dumps({**details, **(extra or {})}, default=str),
                            "result": result})

    if dry_run:
        record("dry-run")
        return {"result": "dry-run"}
    try:
        await gh.post(f"/app/hook/deliveries/{int(delivery['id'])}/attempts", data=b"", jwt=jwt)
    except gidgethub.HTTPException as exc:
        log.error("redelivery of %s (%s) failed: %s", delivery.get("guid"), delivery.get("event"), exc,
                  extra={"delivery": run_id})
        record("error", {"error": str(exc)[:500]})
        return {"result": "error", "error": str(exc)[:500]}
    record("ok")
    return {"result": "ok"}
