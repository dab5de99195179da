"""Reusing answers to questions already answered, with no model call.

An answer is the last comment by someone with write access before a question was closed as
completed. When a new question is near-identical to an answered one (exact after normalisation, or a
strict semantic match), the triage comment links that issue and quotes its answer. An answer stops
being reused when its source issue or comment is edited or deleted, or when the author of an issue
it was reused on gives the bot's comment a 👎.
"""
from __future__ import annotations

import asyncio
import logging

from gidgethub.routing import Router

from bot.db import kv_get, kv_set
from bot.index import answers, store
from bot.index.answers import AnswerCache, CachedAnswer

log = logging.getLogger(__name__)
router = Router()

WRITE_ASSOCIATIONS = {"OWNER", "MEMBER", "COLLABORATOR"}
_fallback_cache = AnswerCache()


def cache_for(ctx) -> AnswerCache:
    """One in-memory LRU per server (the SQLite table behind it is the durable half)."""
    services = ctx.services
    if services is None:
        return _fallback_cache
    if getattr(services, "answer_cache", None) is None:
        services.answer_cache = AnswerCache()
    return services.answer_cache


def _is_question(issue: dict) -> bool:
    labels = {(label.get("name") if isinstance(label, dict) else str(label)).lower()
              for label in issue.get("labels") or []}
    return "question" in labels or answers.is_question(issue.get("title") or "", issue.get("body") or "")


async def lookup_answer(ctx, issue: dict) -> CachedAnswer | None:
    """An earlier answer for this question, or None (never the issue itself)."""
    if not ctx.config.section("answers").get("enabled", True) or not _is_question(issue):
        return None
    row = store.get_issue(ctx.db, ctx.repo, issue["number"])
    vector = store.blob_to_vector(row["vector"]) if row and row.get("vector") else None
    return await asyncio.to_thread(cache_for(ctx).lookup, ctx.db, ctx.repo, issue.get("title") or "",
                                   issue.get("body") or "", number=issue["number"], query_vector=vector)


def remember_reuse(ctx, issue_number: int, found: CachedAnswer, comment_id: int | None) -> None:
    """Note which answer was reused where, so a 👎 from that issue's author can invalidate it."""
    source = store.get_issue(ctx.db, ctx.repo, found.number) or {}
    key = answers.question_key(ctx.repo, source.get("title") or "", source.get("body") or "")
    kv_set(ctx.db, f"reused:{ctx.repo}#{issue_number}", {"key": key, "source": found.number,
                                                          "comment_id": comment_id})


async def find_answer(ctx, issue: dict) -> dict | None:
    """The comment that resolved a closed-as-completed question: the last one by someone with write
    access before it was closed (bots excluded)."""
    closed_at = issue.get("closed_at") or "9999"
    answer = None
    async for comment in ctx.gh.getiter(ctx.url(f"/issues/{issue['number']}/comments") + "?per_page=100"):
        user = comment.get("user") or {}
        if user.get("type") == "Bot" or (comment.get("created_at") or "") > closed_at:
            continue
        if comment.get("author_association") in WRITE_ASSOCIATIONS and user.get("login") != \
                (issue.get("user") or {}).get("login"):
            answer = comment
    return answer


@router.register("issues", action="closed")
async def on_closed(event, gh, ctx):
    issue = event.data["issue"]
    if issue.get("state_reason") != "completed" or not _is_question(issue):
        return
    if not ctx.config.section("answers").get("enabled", True):
        return
    comment = await find_answer(ctx, issue)
    if comment is None:
        return
    store.set_answer(ctx.db, ctx.repo, issue["number"], comment["body"], comment.get("html_url"))
    cache_for(ctx).put(ctx.db, ctx.repo, issue["number"], issue.get("title") or "", issue.get("body") or "",
                       comment["body"], comment.get("html_url"), comment["id"])
    log.info("answer of #%s cached", issue["number"], extra={"repo": ctx.repo, "delivery": ctx.delivery_id})


@router.register("issues", action="edited")
@router.register("issues", action="deleted")
@router.register("issues", action="transferred")
async def on_source_changed(event, gh, ctx):
    changes = event.data.get("changes") or {}
    if event.data["action"] == "edited" and not ({"title", "body"} & set(changes)):
        return
    dropped = answers.invalidate_issue(ctx.db, ctx.repo, event.data["issue"]["number"], cache_for(ctx))
    if dropped:
        log.info("answer of #%s invalidated (issue %s)", event.data["issue"]["number"], event.data["action"],
                 extra={"repo": ctx.repo})


@router.register("issue_comment", action="edited")
@router.register("issue_comment", action="deleted")
async def on_answer_changed(event, gh, ctx):
    answers.invalidate_answer_comment(ctx.db, ctx.repo, event.data["comment"]["id"], cache_for(ctx))


@router.register("issue_comment", action="created")
async def on_reply_to_reused_answer(event, gh, ctx):
    """GitHub sends no webhook for reactions, so a 👎 is checked when the issue's author next comments."""
    issue = event.data["issue"]
    if (event.data["comment"].get("user") or {}).get("login") != (issue.get("user") or {}).get("login"):
        return
    await check_reuse_feedback(ctx, issue)


async def check_reuse_feedback(ctx, issue: dict) -> bool:
    """Invalidate a reused answer the issue's author gave a 👎; True if it did."""
    reuse = kv_get(ctx.db, f"reused:{ctx.repo}#{issue['number']}")
    if not reuse or not reuse.get("comment_id"):
        return False
    author = (issue.get("user") or {}).get("login")
    async for reaction in ctx.gh.getiter(ctx.url(f"/issues/comments/{reuse['comment_id']}/reactions")
                                         + "?per_page=100"):
        if reaction.get("content") == "-1" and (reaction.get("user") or {}).get("login") == author:
            answers.invalidate_key(ctx.db, reuse["key"], cache_for(ctx))
            kv_set(ctx.db, f"reused:{ctx.repo}#{issue['number']}", None)
            log.info("answer from #%s invalidated: 👎 from the author of #%s", reuse["source"], issue["number"],
                     extra={"repo": ctx.repo})
            return True
    return False
