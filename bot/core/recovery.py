"""Which of the App's failed webhook deliveries to ask GitHub to send again (pure).

GitHub does not redeliver a failed webhook by itself: a delivery made while the server was down, or
answered with an error, is lost unless someone asks for it again. The recovery job lists the App's
recent deliveries (``GET /app/hook/deliveries``) and hands them here with what the bot already knows;
this module decides, without I/O, which ones to redeliver.

A delivery is identified by its ``guid`` (the ``X-GitHub-Delivery`` header, the queue's id); every try
of it, first or redelivered, is a separate item with its own numeric ``id`` (what the redeliver call
takes). A guid is redelivered only when every listed try of it failed, it is not in the queue, it was
never asked for before, and its last try is inside the window. At most ``limit`` per run, oldest first,
so events of one issue arrive again in the order they happened.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any


def parse_time(value: str | None) -> datetime | None:
    """GitHub's ``2024-05-01T12:00:00Z`` as an aware datetime; None for a missing or unreadable value."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def delivery_failed(item: dict[str, Any]) -> bool:
    """Whether one try failed: GitHub's docs call a try failed when its ``status`` is not ``OK``.

    The status code is checked too, because a connection failure or timeout reports 0 and a 4xx/5xx
    answer reports the code: anything outside 200-399 is a failure whatever the text says.
    """
    code = item.get("status_code")
    if not isinstance(code, int) or not 200 <= code < 400:
        return True
    return str(item.get("status") or "").strip().upper() != "OK"


@dataclass
class RecoveryDecision:
    """What one recovery run should do: ``redeliver`` (hook-delivery items, oldest first, at most the
    limit) and, for the log, how many failed guids were left out and why."""

    redeliver: list[dict[str, Any]] = field(default_factory=list)
    failed_guids: int = 0
    in_queue: int = 0
    already_requested: int = 0
    too_old: int = 0
    over_limit: int = 0

    def summary(self) -> str:
        return (f"{self.failed_guids} failed deliveries in the window: {len(self.redeliver)} to redeliver, "
                f"{self.in_queue} already in the queue, {self.already_requested} asked for before, "
                f"{self.over_limit} left for the next run")


def plan_redeliveries(items: list[dict[str, Any]], *, now: datetime, window: timedelta, in_queue: set[str],
                      requested: set[str], limit: int) -> RecoveryDecision:
    """Choose the deliveries to redeliver from ``items`` (hook-delivery items as GitHub lists them).

    ``in_queue``: guids the bot stored (whatever became of them: the queue retries its own failures);
    ``requested``: guids a redelivery was already asked for (once per guid, even if that try failed
    too: a guid that keeps failing is a bug to look at, not to hammer). Items whose ``delivered_at``
    is before ``now - window`` are not considered (GitHub refuses redeliveries older than 3 days).
    """
    decision = RecoveryDecision()
    since = now - window
    tries: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        guid = item.get("guid")
        if isinstance(guid, str) and guid:
            tries.setdefault(guid, []).append(item)
    candidates: list[tuple[datetime, dict[str, Any]]] = []
    for guid, attempts in tries.items():
        if not all(delivery_failed(item) for item in attempts):
            continue  # one try got through: the bot has (or had) it
        times = [(parse_time(item.get("delivered_at")), item) for item in attempts]
        dated = [(moment, item) for moment, item in times if moment is not None]
        if not dated:
            continue
        first = min(moment for moment, _ in dated)
        last_moment, last = max(dated, key=lambda pair: (pair[0], pair[1].get("id") or 0))
        if last_moment < since:
            decision.too_old += 1
            continue
        decision.failed_guids += 1
        if guid in in_queue:
            decision.in_queue += 1
        elif guid in requested:
            decision.already_requested += 1
        else:
            candidates.append((first, last))
    candidates.sort(key=lambda pair: (pair[0], pair[1].get("id") or 0))
    keep = max(0, limit)
    decision.redeliver = [item for _, item in candidates[:keep]]
    decision.over_limit = max(0, len(candidates) - keep)
    return decision
