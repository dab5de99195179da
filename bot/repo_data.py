"""Reading repository data the features share (issue templates, labels), with short caches."""
from __future__ import annotations

import base64
import logging

import cachetools
import gidgethub
import yaml

log = logging.getLogger(__name__)

_templates: cachetools.TTLCache = cachetools.TTLCache(maxsize=1000, ttl=600)


async def issue_templates(gh, repo: str) -> list[str]:
    """The texts of ``.github/ISSUE_TEMPLATE/*`` (and the legacy single template), cached ten minutes.

    Shared boilerplate must not make issues look alike, so the index strips these lines before scoring.
    """
    if repo in _templates:
        return _templates[repo]
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
            text = base64.b64decode(data["content"]).decode("utf-8", errors="replace")
            texts.append(render_issue_form(text) if path.lower().endswith((".yml", ".yaml")) else text)
    _templates[repo] = texts
    return texts


def render_issue_form(text: str) -> str:
    """What an issue form (YAML) looks like once GitHub renders an issue from it: ``### Label`` headings,
    checkbox lines and the ``_No response_`` filler, which are the lines to strip."""
    try:
        form = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return ""
    lines: list[str] = ["_No response_"]
    for item in form.get("body") or [] if isinstance(form, dict) else []:
        attributes = (item or {}).get("attributes") or {} if isinstance(item, dict) else {}
        if item.get("type") == "markdown":
            lines.extend(str(attributes.get("value") or "").splitlines())
            continue
        if attributes.get("label"):
            lines.append(f"### {attributes['label']}")
        for option in attributes.get("options") or []:
            label = option.get("label") if isinstance(option, dict) else option
            if label:
                lines.append(f"- [ ] {label}")
                lines.append(f"- [X] {label}")
        for key in ("value", "placeholder"):
            if attributes.get(key):
                lines.extend(str(attributes[key]).splitlines())
    return "\n".join(lines)


def forget_templates(repo: str) -> None:
    _templates.pop(repo, None)
