"""Which repositories the app may act on, from installation events."""
from __future__ import annotations

import logging
import time

from gidgethub.routing import Router

log = logging.getLogger(__name__)
router = Router()


def _record(db, installation_id: int, repos: list[dict]) -> list[str]:
    names = [repo["full_name"] for repo in repos]
    for name in names:
        db["installations"].upsert({"repo": name, "installation_id": installation_id, "added_at": time.time()},
                                   pk="repo")
    return names


def _forget(db, repos: list[str]) -> None:
    for name in repos:
        db.execute("DELETE FROM installations WHERE repo = ?", [name])


@router.register("installation", action="created")
@router.register("installation", action="new_permissions_accepted")
async def on_installation_created(event, gh, ctx):
    names = _record(ctx.db, event.data["installation"]["id"], event.data.get("repositories") or [])
    log.info("installed on %d repositories", len(names), extra={"delivery": ctx.delivery_id})
    if ctx.services is not None:
        for name in names:
            ctx.services.on_repo_added(name, event.data["installation"]["id"])


@router.register("installation", action="deleted")
async def on_installation_deleted(event, gh, ctx):
    installation_id = event.data["installation"]["id"]
    ctx.db.execute("DELETE FROM installations WHERE installation_id = ?", [installation_id])
    log.info("uninstalled (installation %s)", installation_id, extra={"delivery": ctx.delivery_id})


@router.register("installation_repositories", action="added")
async def on_repositories_added(event, gh, ctx):
    names = _record(ctx.db, event.data["installation"]["id"], event.data.get("repositories_added") or [])
    if ctx.services is not None:
        for name in names:
            ctx.services.on_repo_added(name, event.data["installation"]["id"])


@router.register("installation_repositories", action="removed")
async def on_repositories_removed(event, gh, ctx):
    _forget(ctx.db, [repo["full_name"] for repo in event.data.get("repositories_removed") or []])
