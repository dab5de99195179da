"""All feature routers, combined in one place (as in bedevere).

A module listed here that does not exist yet is skipped, so features can land one at a time.
"""
from __future__ import annotations

import importlib

from gidgethub.routing import Router

FEATURE_MODULES = [
    "bot.features.installation",
    "bot.features.index",
    "bot.features.answers",
    "bot.features.triage",
    "bot.features.commands",
    "bot.features.lifecycle",
    "bot.features.digest",
    "bot.features.learning",
]


def load_routers() -> list[tuple[str, Router]]:
    routers = []
    for name in FEATURE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        routers.append((name.rsplit(".", 1)[1], module.router))
    return routers


def routed_events(routers: list[tuple[str, Router]] | None = None) -> set[str]:
    """Event names some handler listens to (app.yml must subscribe to exactly these)."""
    events: set[str] = set()
    for _name, router in routers if routers is not None else load_routers():
        events.update(router._shallow_routes.keys())
        events.update(router._deep_routes.keys())
    return events
