"""The first response: classify a new issue with the local tiers (the big model only when they are
unsure), find possible duplicates and an earlier answer, and post one comment plus allowlisted labels.

The decision itself is ``bot.core.triage.decide`` (pure); this module gathers its inputs, runs the
model off the event loop, and applies the plan. A model can only ever lead to labels from the
allowlist and the one marked comment: closing, assigning or pinging anyone takes a person.
"""
from __future__ import annotations

import asyncio
import difflib
import logging
import time
from typing import Any

from gidgethub.routing import Router

from bot.actions import apply, find_marked_comment, repo_labels
from bot.core import render
from bot.core.plan import AddLabels, Comment, CreateLabel, marker
from bot.core.triage import TRIAGE_MARKER, comment_mode, decide
from bot.db import has_flag, kv_get, kv_set
from bot.features import shadow
from bot.models.base import IssueText, Prediction

log = logging.getLogger(__name__)
router = Router()

SUBSTANTIAL_EDIT = 0.8  # re-triage when the text is less than this similar to what was triaged
SUMMARY_MARKER = marker("summary")


async def _duplicates(ctx, issue: dict) -> list[Any]:
    """Earlier issues of this repo that score above the duplicates threshold (never acted on alone)."""
    config = ctx.config.section("duplicates")
    if not config.get("enabled", True):
        return []
    from bot.index import store
    from bot.index.duplicates import find_duplicates
    from bot.index.text import template_lines
    from bot.repo_data import issue_templates

    try:
        templates = template_lines(await issue_templates(ctx.gh, ctx.repo))
        row = store.get_issue(ctx.db, ctx.repo, issue["number"]) or {}
        vector = store.blob_to_vector(row["vector"]) if row.get("vector") else None
        return await asyncio.to_thread(
            find_duplicates, ctx.db, ctx.repo, issue.get("title") or "", issue.get("body") or "",
            created_at=issue.get("created_at"), number=issue["number"], templates=templates,
            query_vector=vector, vector_model=row.get("vector_model"), threshold=config.get("threshold"),
            max_candidates=int(config.get("max_candidates", 3)))
    except Exception:  # noqa: BLE001 - duplicates are a nicety; triage goes on without them
        log.exception("duplicate search failed", extra={"repo": ctx.repo, "delivery": ctx.delivery_id})
        return []


async def _cached_answer(ctx, issue: dict) -> Any:
    from bot.features.answers import lookup_answer

    try:
        return await lookup_answer(ctx, issue)
    except Exception:  # noqa: BLE001
        log.exception("answer cache lookup failed", extra={"repo": ctx.repo, "delivery": ctx.delivery_id})
        return None


async def predict(ctx, issue: dict, *, cascade: Any = None, summary: str | None = None,
                  **options: Any) -> Prediction | None:
    """The cascade's decision, computed in a worker thread (inference never blocks intake).

    ``cascade`` and ``options`` (``threshold``, ``log_extra``) run a candidate setup instead (a canary)."""
    if ctx.models is None:
        return None
    text = IssueText.from_dict(issue, ctx.repo)
    triage_config = ctx.config.section("triage")
    if summary is not None:
        triage_config = {**triage_config, "summary": summary}
    started = time.perf_counter()
    prediction = await asyncio.to_thread(
        (cascade or ctx.models).predict, text, repo=ctx.repo, installation_id=ctx.installation_id,
        delivery_id=ctx.delivery_id, triage_config=triage_config,
        fallback_config=ctx.config.section("fallback"), **options)
    metrics = getattr(ctx.services, "metrics", None)
    if metrics is not None:
        metrics.model_calls.labels(prediction.tier or "local").inc()
        metrics.model_latency.labels(prediction.tier or "local").observe(time.perf_counter() - started)
        if prediction.escalated:
            metrics.escalations.labels("low-confidence" if prediction.valid else "invalid").inc()
    return prediction


async def run_triage(ctx, issue: dict | int, *, actor: str | None = None, rerun: bool = False) -> dict[str, Any]:
    """Triage one issue and apply the plan; returns the plan's data (kind, labels, confidence, ...)."""
    config = ctx.config.section("triage")
    if not config.get("enabled", True):
        return {"skipped": "triage disabled"}
    if isinstance(issue, int):
        issue = await ctx.gh.getitem(ctx.url(f"/issues/{issue}"))
    number = issue["number"]
    labels = await repo_labels(ctx)
    duplicates = await _duplicates(ctx, issue)
    for candidate in duplicates:  # the digest lists the week's suggestions; learning compares with /duplicate
        ctx.db.execute("INSERT OR REPLACE INTO duplicate_suggestions (repo, issue, duplicate_of, score, created_at)"
                       " VALUES (?, ?, ?, ?, ?)", [ctx.repo, number, candidate.number, candidate.score, time.time()])
    cached = await _cached_answer(ctx, issue)
    if cached is not None:
        # A near-identical question was answered before: reuse it, no model call at all.
        prediction = Prediction(kind="question", confidence=1.0, tier="answer-cache", model="answer-cache",
                                summary="", valid=True)
    setup = shadow.candidate_of(config) if ctx.models is not None else None  # a candidate setup to try
    canary = False
    mode = summary_mode(ctx, config)
    decide_with = {**config, "summary": mode}
    if cached is None and setup is not None and shadow.selected_for_canary(ctx.repo, number, config):
        try:  # a canary issue: the candidate setup decides, and is applied
            prediction = await predict(ctx, issue, summary=mode, **shadow.predict_kwargs(ctx, setup))
            canary, decide_with = True, {**shadow.decide_config(config, setup), "summary": mode}
        except Exception:  # noqa: BLE001 - a broken candidate falls back to the current setup
            log.exception("canary candidate failed; using the current setup",
                          extra={"repo": ctx.repo, "delivery": ctx.delivery_id})
    if cached is None and not canary:
        prediction = await predict(ctx, issue, summary=mode)
    no_ai = has_flag(ctx.db, ctx.repo, number, "no-ai")
    plan = decide(issue, decide_with, labels, prediction, duplicates, cached, repo=ctx.repo, no_ai=no_ai)
    if rerun and not plan.data["commented"] and comment_mode(config.get("comment")) == "auto" \
            and await find_marked_comment(ctx, number, TRIAGE_MARKER) is not None:
        # Nothing to ask any more, but the earlier comment may still ask for it: bring it up to date.
        plan = decide(issue, decide_with, labels, prediction, duplicates, cached, repo=ctx.repo, no_ai=no_ai,
                      earlier_comment=True)
    needs_info = ctx.config.section("lifecycle")["needs_info"]
    asked = any(isinstance(action, Comment) for action in plan.actions)
    if plan.data.get("needs_info") and asked and needs_info.get("enabled", True):
        plan.actions.insert(0, CreateLabel(needs_info["label"], "d4c5f9", "Waiting for information from the author"))
        plan.actions.insert(1, AddLabels(number, (needs_info["label"],)))
    results = await apply(plan, ctx)
    if cached is not None:
        from bot.features.answers import remember_reuse

        comment_id = next((r.get("comment_id") for r in results if r["action"] == "Comment"), None)
        remember_reuse(ctx, number, cached, comment_id)
    if setup is not None and cached is None and prediction is not None \
            and (canary or setup["mode"] == "shadow"):
        # After the plan is applied, so the experiment never delays the response nor changes it.
        plan.data["canary"] = canary
        await shadow.compare(ctx, issue, labels, config, setup, prediction, canary=canary)
    kv_set(ctx.db, f"triaged:{ctx.repo}#{number}", {"text": _text(issue), "at": time.time()})
    log.info("triaged #%s: %s", number, plan.reason, extra={"repo": ctx.repo, "delivery": ctx.delivery_id})
    return plan.data


def summary_mode(ctx, config: dict) -> str:
    """``triage.summary`` as it applies here: ``model`` needs a bigger local model than the bundled one.

    The bundled SmolLM2-135M wrote 5 bad summaries in 10 (issue #12), so abstractive summaries need the
    operator's LOCAL_MODEL_PATH; without it a repo's ``summary: model`` quotes the author instead."""
    mode = str(config.get("summary") or "extractive")
    if mode == "model" and not getattr(ctx.models, "abstractive_summaries", False):
        log.info("triage.summary is 'model' but no LOCAL_MODEL_PATH is configured: quoting the author",
                 extra={"repo": ctx.repo, "delivery": ctx.delivery_id})
        return "extractive"
    return mode


def _text(issue: dict) -> str:
    return f"{issue.get('title') or ''}\n{issue.get('body') or ''}"


@router.register("issues", action="opened")
async def on_issue_opened(event, gh, ctx):
    await run_triage(ctx, event.data["issue"])


@router.register("issues", action="edited")
async def on_issue_edited(event, gh, ctx):
    """A substantial edit re-runs triage, which edits the earlier comment rather than adding one."""
    issue = event.data["issue"]
    if issue.get("state") != "open":
        return
    before = kv_get(ctx.db, f"triaged:{ctx.repo}#{issue['number']}")
    if before is None:
        return
    similarity = difflib.SequenceMatcher(None, before["text"], _text(issue)).ratio()
    if similarity < SUBSTANTIAL_EDIT:
        await run_triage(ctx, issue, rerun=True)


async def summarize(ctx, issue_number: int) -> str:
    """One summary of the whole thread (every page of comments), posted or refreshed in place."""
    issue = await ctx.gh.getitem(ctx.url(f"/issues/{issue_number}"))
    parts = [issue.get("body") or ""]
    async for comment in ctx.gh.getiter(ctx.url(f"/issues/{issue_number}/comments") + "?per_page=100"):
        if (comment.get("user") or {}).get("type") == "Bot":
            continue
        parts.append(f"{comment['user']['login']}: {comment.get('body') or ''}")
    thread = {"number": issue_number, "title": issue.get("title") or "", "body": "\n\n".join(parts),
              "user": issue.get("user") or {}}
    prediction = await predict(ctx, thread, summary="model")  # asked for explicitly: the model writes it
    summary = (prediction.summary if prediction is not None else "").strip()
    body = summary_body(summary, len(parts) - 1)
    await apply_plan_comment(ctx, issue_number, body, SUMMARY_MARKER)
    return summary


SUMMARY_TEMPLATE = ("**Summary of this thread so far** ({comments} comments): {summary}\n\n"
                    "_Automated summary by the local model; it can be wrong._")
NO_SUMMARY = "I could not summarise this thread with confidence, so I won't guess."


def summary_body(summary: str, comments: int) -> render.Safe:
    """The ``/summarize`` comment: the model's text as escaped plain text (it mentions nobody)."""
    if not summary.strip():
        return render.fmt(NO_SUMMARY)
    return render.fmt(SUMMARY_TEMPLATE, comments=int(comments), summary=render.line(summary, 1500))


async def apply_plan_comment(ctx, issue_number: int, body: render.Safe, comment_marker: str) -> None:
    from bot.core.plan import Plan

    await apply(Plan([Comment(issue_number, body, marker=comment_marker)]), ctx)
