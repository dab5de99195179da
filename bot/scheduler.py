"""Periodic work inside the server: the lifecycle sweep (hourly, jittered), the weekly digest, and the
recovery of webhook deliveries missed while the server was down (soon after start, then hourly), and the
pruning of old delivery payloads (at start, then hourly).

Each job asks its feature whether anything is due for each installed repository, so a server that was
down when a digest was due posts it once at start, and a crash mid-sweep resumes where it stopped.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import random

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 3600.0
DIGEST_INTERVAL = 600.0
RECOVERY_INTERVAL = 3600.0
RECOVERY_FIRST_DELAY = (10.0, 70.0)  # seconds after start: the server is listening for the redeliveries
RETENTION_INTERVAL = 3600.0


def _installed(services) -> list[tuple[str, int]]:
    return [(row["repo"], row["installation_id"])
            for row in services.db.query("SELECT repo, installation_id FROM installations ORDER BY repo")]


async def _every(services, interval: float, module: str, func: str, jitter: float) -> None:
    await asyncio.sleep(random.uniform(1.0, 1.0 + jitter))
    while True:
        try:
            feature = importlib.import_module(module)
        except ModuleNotFoundError:
            return
        job = getattr(feature, func)
        try:
            installed = _installed(services)
        except Exception:  # noqa: BLE001 - a database error now must not end the schedule for good
            log.exception("%s.%s: could not list the installed repositories; next try in %.0fs", module, func,
                          interval)
            installed = []
        for repo, installation_id in installed:
            try:
                await job(services, repo, installation_id)
            except Exception:  # noqa: BLE001 - one repo's failure must not stop the others
                log.exception("%s.%s failed for %s", module, func, repo, extra={"repo": repo})
        await asyncio.sleep(interval + random.uniform(0, jitter))


async def _app_job(services, interval: float, module: str, func: str, first_delay: tuple[float, float]) -> None:
    """A job for the whole App rather than per repository; its first run comes soon after start."""
    await asyncio.sleep(random.uniform(*first_delay))
    job = getattr(importlib.import_module(module), func)
    while True:
        try:
            await job(services)
        except Exception:  # noqa: BLE001 - a failed run must not end the schedule
            log.exception("%s.%s failed", module, func)
        await asyncio.sleep(interval + random.uniform(0, first_delay[1] - first_delay[0]))


async def prune_once(services, now: float | None = None) -> int:
    """Prune payloads of deliveries done more than DELIVERY_RETENTION_DAYS ago (in a thread, with its own
    connection, so a large prune never blocks the event loop); returns how many were pruned."""
    from bot.queue import prune_payloads

    days = services.settings.delivery_retention_days
    pruned = await asyncio.to_thread(prune_payloads, services.db, days, now)
    if pruned:
        log.info("pruned the payloads of %d deliveries done more than %g days ago", pruned, days)
    return pruned


async def _retention(services, interval: float = RETENTION_INTERVAL) -> None:
    while True:
        try:
            await prune_once(services)
        except Exception:  # noqa: BLE001 - a locked or full database now is retried next hour
            log.exception("pruning delivery payloads failed; trying again in %.0fs", interval)
        await asyncio.sleep(interval)


def start_schedulers(services) -> list[asyncio.Task]:
    return [
        asyncio.create_task(_retention(services)),
        asyncio.create_task(_every(services, SWEEP_INTERVAL, "bot.features.lifecycle", "scheduled_sweep", 300)),
        asyncio.create_task(_every(services, DIGEST_INTERVAL, "bot.features.digest", "scheduled_digest", 30)),
        # Deliveries GitHub could not make while the server was down: once the server listens, then hourly.
        asyncio.create_task(_app_job(services, RECOVERY_INTERVAL, "bot.features.recovery", "scheduled_recovery",
                                     RECOVERY_FIRST_DELAY)),
    ]
