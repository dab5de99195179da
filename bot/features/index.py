"""Keeps the bot's own copy of every installed repository's issues: backfill and webhook updates.

The index is what makes "this looks like #123" possible within seconds, and what the learned
classifier trains on. Backfill pages through the issues API (100 a page, oldest first so new issues
never shift pages under us), records each finished page so a crash resumes, and later runs only ask
for what changed (``since=``).
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

from gidgethub.routing import Router

from bot.index import store
from bot.repo_data import forget_templates, issue_templates
from bot.index.text import template_lines

log = logging.getLogger(__name__)
router = Router()

Progress = Callable[[int, int | None, float], None]


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def count_issues(gh, repo: str) -> int | None:
    """How many issues (not PRs) the repo has: one search request, for the progress bar."""
    try:
        data = await gh.getitem(f"/search/issues?q=repo:{repo}+is:issue&per_page=1")
    except Exception:  # noqa: BLE001 - the bar is a nicety; backfill works without a total
        return None
    return data.get("total_count")


async def backfill(gh, db, repo: str, *, progress: Progress | None = None, full: bool = False) -> dict[str, Any]:
    """Index every issue of ``repo`` (resuming an interrupted run); returns counts for the caller."""
    state = store.backfill_state(db, repo) or {}
    if full or not state:
        state = {}
    if state.get("finished_at"):
        # A finished run: only what changed since it started.
        since, start_page, done = state.get("next_since"), 1, 0
    else:
        since, start_page, done = state.get("since"), int(state.get("last_page") or 0) + 1, int(state.get("done") or 0)
    started_iso = state.get("started_iso") if not state.get("finished_at") and state.get("started_iso") else _now_iso()
    total = await count_issues(gh, repo) if not since else None
    templates = template_lines(await issue_templates(gh, repo))
    store.save_backfill_state(db, repo, since=since, last_page=start_page - 1, done=done, total=total,
                              started_at=time.time(), finished_at=None, started_iso=started_iso)
    sort = "updated" if since else "created"
    page = start_page
    began = time.monotonic()
    fetched = 0
    while True:
        query = f"?state=all&per_page=100&sort={sort}&direction=asc&page={page}"
        if since:
            query += f"&since={since}"
        items = await gh.getitem(f"/repos/{repo}/issues{query}")
        rows = [store.issue_row(repo, item, templates) for item in items]
        rows = [row for row in rows if row is not None]
        store.upsert_issues(db, rows)
        done += len(rows)
        fetched += len(rows)
        store.save_backfill_state(db, repo, last_page=page, done=done)
        elapsed = time.monotonic() - began
        if progress is not None:
            progress(done, total, fetched / elapsed if elapsed > 0 else 0.0)
        log.info("backfill %s: page %d, %d issues indexed%s", repo, page, done,
                 f" of {total}" if total else "", extra={"repo": repo})
        if len(items) < 100:
            break
        page += 1
    store.save_backfill_state(db, repo, finished_at=time.time(), next_since=started_iso)
    embedded = await embed_missing(db, repo)
    return {"repo": repo, "indexed": done, "fetched": fetched, "pages": page - start_page + 1,
            "since": since, "embedded": embedded}


async def embed_missing(db, repo: str) -> int:
    """Compute vectors for issues that lack one, off the event loop (never blocks intake)."""
    try:
        from bot.index import embed
    except ImportError:
        return 0
    embed_missing_fn = getattr(embed, "embed_missing", None)
    if embed_missing_fn is None:
        return 0
    return await asyncio.to_thread(embed_missing_fn, db, repo)


def _bar(done: int, total: int | None, rate: float) -> None:
    if total:
        eta = (total - done) / rate if rate > 0 else 0
        filled = int(30 * min(done, total) / total)
        line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} issues  {rate:.0f}/s  ETA {eta:.0f}s"
    else:
        line = f"\r{done} issues  {rate:.0f}/s"
    sys.stderr.write(line)
    sys.stderr.flush()


async def backfill_main(argv: list[str]) -> int:
    """`python -m bot backfill OWNER/NAME [--full]`."""
    from bot.app import Services
    from bot.cli import ArgumentParser, repo_context, repo_name
    from bot.config import cli_settings

    parser = ArgumentParser(prog="python -m bot backfill")
    parser.add_argument("repo", type=repo_name, help="OWNER/NAME")
    parser.add_argument("--full", action="store_true", help="start over instead of fetching only what changed")
    args = parser.parse_args(argv)
    settings = cli_settings("backfill")
    if settings is None:
        return 2
    services = Services(settings)
    try:
        ctx = await repo_context(services, args.repo, "cli-backfill", command="backfill")
        result = await backfill(ctx.gh, services.db, ctx.repo, progress=_bar, full=args.full)
        trained = await train_from_history(services.db, ctx.repo, ctx.config.section("triage"))
    finally:
        await services.close()
    sys.stderr.write("\n")
    print(f"{result['repo']}: {result['fetched']} issues fetched in {result['pages']} pages, "
          f"{result['indexed']} indexed, {result['embedded']} embedded; classifier "
          f"{'trained on ' + str(trained.get('examples')) + ' labelled issues' if trained and trained.get('trained') else 'not trained (too little labelled history)'}")
    return 0


def _repo(event) -> str:
    return event.data["repository"]["full_name"]


@router.register("issues", action="opened")
@router.register("issues", action="edited")
@router.register("issues", action="closed")
@router.register("issues", action="reopened")
@router.register("issues", action="labeled")
@router.register("issues", action="unlabeled")
async def on_issue_changed(event, gh, ctx):
    """Keep the stored copy current (the triage handler reads it for duplicates)."""
    templates = template_lines(await issue_templates(gh, ctx.repo))
    store.upsert_issue(ctx.db, ctx.repo, event.data["issue"], templates)
    if event.data["action"] in ("opened", "edited"):
        await embed_missing(ctx.db, ctx.repo)


@router.register("issues", action="deleted")
@router.register("issues", action="transferred")
async def on_issue_gone(event, gh, ctx):
    store.delete_issue(ctx.db, ctx.repo, event.data["issue"]["number"])


@router.register("issue_comment", action="created")
@router.register("issue_comment", action="edited")
@router.register("issue_comment", action="deleted")
async def on_comment(event, gh, ctx):
    """Comments matter to the index only as answers (and the comment count)."""
    if event.data["issue"].get("pull_request"):
        return
    issue = event.data["issue"]
    if store.get_issue(ctx.db, ctx.repo, issue["number"]) is not None:
        ctx.db.execute("UPDATE issues SET comments = ?, updated_at = ? WHERE repo = ? AND number = ?",
                       [issue.get("comments", 0), issue.get("updated_at"), ctx.repo, issue["number"]])


async def on_repo_added(services, repo: str, installation_id: int) -> None:
    """Backfill a newly installed repository in the background."""
    try:
        ctx = await services.context_for(repo, installation_id, f"backfill-{repo}")
        result = await backfill(ctx.gh, services.db, repo)
        log.info("backfill %s finished: %s", repo, result, extra={"repo": repo})
    except Exception:  # noqa: BLE001 - logged; the next install event or CLI run resumes
        log.exception("backfill %s failed; it resumes from the last page on the next run", repo)
        return
    await train_from_history(services.db, repo, ctx.config.section("triage"), services.models)


async def train_from_history(db, repo: str, triage_config: dict, models=None) -> dict | None:
    """Train the repo's classifier on its labelled history right after a backfill, so the learned tier
    is there from the first new issue instead of after the first 20 label events."""
    from bot.features.learning import retrain

    try:
        state = await retrain(db, repo, triage_config, models)
    except Exception:  # noqa: BLE001 - the LLM tier still works without a classifier
        log.exception("training the classifier of %s failed", repo, extra={"repo": repo})
        return None
    log.info("classifier of %s: %s on %s examples", repo, "trained" if state.get("trained") else "not enough "
             "labelled history yet", state.get("examples"), extra={"repo": repo})
    return state


def forget(repo: str) -> None:
    forget_templates(repo)
