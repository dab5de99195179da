"""Recover webhook deliveries GitHub could not make while the server was down.

GitHub does not redeliver a failed webhook by itself. At start and hourly (``bot.scheduler``), and on
demand (``python -m bot recover``), this job lists the App's recent deliveries (``GET
/app/hook/deliveries``, App JWT, newest first, paginated with ``cursor``), lets
``bot.core.recovery.plan_redeliveries`` choose the failed ones the queue never stored, and asks GitHub
to send each again (``POST /app/hook/deliveries/{id}/attempts`` through ``bot.actions``). GitHub sends
a redelivery with the original ``X-GitHub-Delivery`` guid, so the queue stores it as the delivery it
missed; anything already stored is ignored by the queue as well.

Bounds: only deliveries of the last ``REDELIVERY_WINDOW_HOURS`` (default 24; GitHub refuses beyond 3
days), at most ``REDELIVERY_MAX_PER_RUN`` requests per run (default 50; the rest wait for the next
run), at most ``MAX_PAGES`` pages listed, and one request per guid ever (``redelivery_requests``),
even if that redelivery failed as well. Needs no App permission: these endpoints take the App's JWT.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import gidgethub

from bot.actions import redeliver_webhook
from bot.core import recovery as core

log = logging.getLogger(__name__)

PER_PAGE = 100
MAX_PAGES = 20  # 2,000 deliveries; a run that needs more says so in the log
# Rows older than GitHub's 3-day redelivery limit can never matter again.
KEEP_REQUESTS = timedelta(days=7)


def ensure_schema(db) -> None:
    """``redelivery_requests``: one row per guid the bot asked GitHub to redeliver (once, ever)."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS redelivery_requests (
            guid TEXT PRIMARY KEY,
            hook_delivery_id INTEGER NOT NULL,
            event TEXT,
            action TEXT,
            delivered_at TEXT,
            requested_at REAL NOT NULL,
            result TEXT NOT NULL,
            error TEXT
        )"""
    )


@dataclass
class RecoveryReport:
    """What one run found and did; ``summary()`` is what the log and the CLI say."""

    listed: int = 0
    pages: int = 0
    truncated: bool = False
    decision: core.RecoveryDecision | None = None
    requested: int = 0
    errors: int = 0
    dry_run: bool = False
    disabled: bool = False

    def summary(self) -> str:
        if self.disabled:
            return "delivery recovery is off (REDELIVERY_MAX_PER_RUN=0 or REDELIVERY_WINDOW_HOURS=0)"
        verb = "would ask" if self.dry_run else "asked"
        text = f"{self.listed} deliveries listed ({self.pages} pages)"
        if self.truncated:
            text += f", stopped at {MAX_PAGES} pages before the end of the window"
        if self.decision is not None:
            text += f"; {self.decision.summary()}; {verb} GitHub to redeliver {self.requested}"
        if self.errors:
            text += f", {self.errors} requests failed"
        return text


async def _recent_deliveries(gh, jwt: str, since: datetime, report: RecoveryReport) -> list[dict[str, Any]]:
    """The App's deliveries back to ``since`` (GitHub lists newest first), at most MAX_PAGES pages."""
    items: list[dict[str, Any]] = []
    async for item in gh.getiter(f"/app/hook/deliveries?per_page={PER_PAGE}", jwt=jwt):
        if not isinstance(item, dict):
            continue
        items.append(item)
        delivered = core.parse_time(item.get("delivered_at"))
        if delivered is not None and delivered < since:
            break  # the rest is older than the window
        if len(items) >= MAX_PAGES * PER_PAGE:
            report.truncated = True
            break
    report.listed = len(items)
    report.pages = -(-len(items) // PER_PAGE)
    return items


def _known_guids(db, table: str, column: str, guids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(guids), 500):  # SQLite's bound-parameter limit
        chunk = guids[start:start + 500]
        marks = ", ".join("?" for _ in chunk)
        found.update(row[0] for row in db.execute(f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", chunk))
    return found


async def recover_missed_deliveries(services, *, now: datetime | None = None,
                                    dry_run: bool | None = None) -> RecoveryReport:
    """One recovery run: list, decide, redeliver; logged, bounded, and safe to run twice at once."""
    settings = services.settings
    dry_run = settings.dry_run if dry_run is None else dry_run
    report = RecoveryReport(dry_run=dry_run)
    limit = int(settings.redelivery_max_per_run)
    window = timedelta(hours=float(settings.redelivery_window_hours))
    if limit <= 0 or window <= timedelta(0):
        report.disabled = True
        return report
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    run_id = f"recovery-{now.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    await services.start()
    db = services.db
    db.execute("DELETE FROM redelivery_requests WHERE requested_at < ?",
               [time.time() - KEEP_REQUESTS.total_seconds()])
    gh = services.github.for_app()
    items = await _recent_deliveries(gh, services.github.app_jwt(), now - window, report)
    guids = sorted({str(item.get("guid")) for item in items if item.get("guid")})
    decision = core.plan_redeliveries(
        items, now=now, window=window, in_queue=_known_guids(db, "deliveries", "id", guids),
        requested=_known_guids(db, "redelivery_requests", "guid", guids), limit=limit)
    report.decision = decision
    for item in decision.redeliver:
        guid = str(item["guid"])
        if not dry_run:
            # Claimed before the request: a second run (the CLI beside the server) skips it; a crash
            # right here costs this one delivery's recovery, never a second request.
            claimed = db.execute(
                "INSERT OR IGNORE INTO redelivery_requests (guid, hook_delivery_id, event, action, delivered_at,"
                " requested_at, result) VALUES (?, ?, ?, ?, ?, ?, 'requesting')",
                [guid, int(item["id"]), item.get("event"), item.get("action"), item.get("delivered_at"),
                 time.time()]).rowcount
            if not claimed:
                continue
        outcome = await redeliver_webhook(gh, jwt=services.github.app_jwt(), db=db, delivery=item,
                                          dry_run=dry_run, run_id=run_id)
        if outcome["result"] == "error":
            report.errors += 1
        else:
            report.requested += 1
        if not dry_run:
            db.execute("UPDATE redelivery_requests SET result = ?, error = ? WHERE guid = ?",
                       [outcome["result"], outcome.get("error"), guid])
        log.info("recovery: %s redelivery of %s %s.%s (failed at %s: %s)",
                 "would ask for" if dry_run else "asked for", guid, item.get("event"), item.get("action") or "-",
                 item.get("delivered_at"), str(item.get("status") or "")[:80], extra={"delivery": run_id})
    level = logging.WARNING if report.truncated or decision.over_limit or report.errors else logging.INFO
    log.log(level, "recovery: %s", report.summary(), extra={"delivery": run_id})
    return report


async def scheduled_recovery(services) -> RecoveryReport | None:
    """The recovery run ``bot.scheduler`` starts once shortly after start and then hourly."""
    try:
        return await recover_missed_deliveries(services)
    except gidgethub.HTTPException as exc:
        # e.g. the App has no webhook configured (404) or the key is wrong (401): say so, try next hour.
        log.warning("recovery: cannot list the App's webhook deliveries: %s", exc)
        return None


async def recover_main(argv: list[str]) -> int:
    """``python -m bot recover [--dry-run]``: redeliver the App's failed webhook deliveries now."""
    from bot.app import Services
    from bot.config import cli_settings

    parser = argparse.ArgumentParser(prog="python -m bot recover",
                                     description="Ask GitHub to redeliver webhook deliveries the server missed.")
    parser.add_argument("--dry-run", action="store_true", help="ask for nothing; print what would be asked for")
    args = parser.parse_args(argv)
    settings = cli_settings("recover")
    if settings is None:
        return 2
    services = Services(settings)
    try:
        report = await recover_missed_deliveries(services, dry_run=args.dry_run or None)
    except gidgethub.HTTPException as exc:
        print(f"recover: cannot list the App's webhook deliveries: {exc}", file=sys.stderr)
        return 1
    finally:
        await services.close()
    print(report.summary())
    return 1 if report.errors else 0
