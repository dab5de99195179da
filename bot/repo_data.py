"""Reading repository data the features share (issue templates, labels), with short caches."""
from __future__ import annotations

import base64
import logging

import cachetools
import gidgethub

log = logging.getLogger(__name__)

_templates: cachetools.TTLCache = cachetools.TTLCache(maxsize=1000, ttl=600)


async def issue_templates(gh, repo: str) -> list[str]:
    """The texts of ``.github/ISSUE_TEMPLATE/*`` (and the legacy single template), cached ten minutes.

    Shared boilerplate must not make issues look alike, so the index strips these lines before scoring.
    """
    key = (getattr(gh, "base_url", ""), repo)
    if key in _templates:
        return _templates[key]
    texts: list[str] = []
    try:
        listing = await gh.getitem(f"/repos/{repo}/contents/.github/ISSUE_TEMPLATE")
    except gidgethub.BadRequest as exc:
        if exc.status_code != 404:
            raise
        listing = []
    paths = [item["path"] for item in listing if isinstance(item, dict) and item.get("type") == "file"
             and item.get("name", "").lower().endswith((".md", ".yml", ".yaml"))] if isinstance(listing, list) else []
    paths.append(".github/ISSUE_TEMPLATE.md")
    for path in paths[:20]:
        try:
            data = await gh.getitem(f"/repos/{repo}/contents/{path}")
        except gidgethub.BadRequest as exc:
            if exc.status_code != 404:
                raise
            continue
        if isinstance(data, dict) and data.get("content"):
            texts.append(base64.b64decode(data["content"]).decode("utf-8", errors="replace"))
    _templates[key] = texts
    return texts


def forget_templates(repo: str) -> None:
    for key in [key for key in _templates if key[1] == repo]:
        _templates.pop(key, None)
