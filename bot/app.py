"""The web server: verify, enqueue, answer 202; plus /health and /metrics, and the worker that
turns stored deliveries into handler calls.

The webhook path does as little as possible (GitHub waits at most 10 s): check the signature in
constant time, parse, store the delivery durably, answer. Everything else happens in the worker.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import sqlite3
import threading
import time
from typing import Any

import aiohttp
import cachetools
import gidgethub
import gidgethub.sansio
from aiohttp import web

from bot import queue
from bot.config import CONFIG_PATH, RepoConfig, Settings, read_repo_config
from bot.context import Context
from bot.db import DbThread, open_db
from bot.features import load_routers
from bot.github import GitHubFactory
from bot.intake import (MAX_BODY, BadBody, MemoryBudget, Rejected, decode_payload, read_signed_body,
                        well_formed_signature)
from bot.metrics import Metrics

log = logging.getLogger(__name__)

SERVICES = web.AppKey("services", "Services")


def signature_for(secret: str, body: bytes) -> str:
    """GitHub's X-Hub-Signature-256 value: HMAC-SHA256 of the exact bytes sent."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    if not header or not secret:
        return False
    return hmac.compare_digest(signature_for(secret, body), header.strip())


def is_bot_sender(payload: dict[str, Any], app_slug: str) -> bool:
    """Events caused by this app or any other bot are ignored, so two bots cannot loop."""
    sender = payload.get("sender") or {}
    return sender.get("type") == "Bot" or sender.get("login") == f"{app_slug}[bot]"


class Services:
    """Long-lived things shared by handlers: database, GitHub clients, models, config cache."""

    def __init__(self, settings: Settings, db=None, metrics: Metrics | None = None, models: Any = None):
        self.settings = settings
        self.db = db if db is not None else open_db(settings.database_path)
        self.metrics = metrics or Metrics()
        self.routers = load_routers()
        self.session: aiohttp.ClientSession | None = None
        self.github: GitHubFactory | None = None
        if models is not None:
            from bot.models.factory import wrap

            models = wrap(models, self.db, settings)
        self._models = models
        self._models_lock = threading.Lock()
        self.config_cache: cachetools.TTLCache = cachetools.TTLCache(maxsize=1000, ttl=300)
        self.config_warnings: dict[str, list[str]] = {}
        self.worker = queue.Worker(self.db, self.handle_delivery, concurrency=settings.worker_concurrency,
                                   max_attempts=settings.max_attempts, metrics=self.metrics,
                                   busy_timeout=settings.worker_busy_timeout,
                                   stall_after=settings.health_max_queue_age)  # one bound: HEALTH_MAX_QUEUE_AGE_SECONDS
        self.background: set[asyncio.Task] = set()

    async def start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
            self.github = GitHubFactory(self.settings, self.session, self.metrics)

    async def close(self) -> None:
        await self.worker.stop()
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
            self.session = None

    @property
    def models(self) -> Any:
        """The model cascade, loaded on first use (the GGUF loads in well under a second).

        Handlers get it through ``ctx.models``, a ``LazyModels`` that loads it only when a handler
        actually uses it: a command or an installation event never waits for (or fails on) the model.
        A load that fails raises ``ModelUnavailable`` in the handler that needed it and is tried again
        on the next use.
        """
        if self._models is None:
            with self._models_lock:  # a worker thread and the loop may both ask first
                if self._models is None:
                    from bot.models.factory import build_cascade

                    try:
                        self._models = build_cascade(self.settings, self.db, metrics=self.metrics)
                    except Exception as exc:  # noqa: BLE001 - named, and only for the handlers that need it
                        log.error("the local model could not be loaded (%s): %s", self.settings.local_model_path
                                  or "bundled model", f"{type(exc).__name__}: {exc}"[:300])
                        raise ModelUnavailable(f"the local model could not be loaded: {type(exc).__name__}: "
                                               f"{exc}"[:300]) from exc
        return self._models

    def spawn(self, coro) -> asyncio.Task:
        """Run ``coro`` in the background; if it fails, the failure is logged (not lost with the task)."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(_log_failure)
        return task

    def on_repo_added(self, repo: str, installation_id: int) -> None:
        """Hook for features that start work when a repository is added (e.g. index backfill)."""
        try:
            from bot.features.index import on_repo_added
        except ImportError:
            return
        self.spawn(on_repo_added(self, repo, installation_id))

    async def repo_config(self, gh, repo: str) -> RepoConfig:
        """The repository's validated config, cached for five minutes.

        The file is hostile input: it is parsed in a thread with a time bound (``read_repo_config``), and
        a file that cannot be used gives the defaults and one warning, never a failed delivery. The
        warnings are bounded (at most 60 characters of any value from the file) and logged as one line.
        """
        cached = self.config_cache.get(repo)
        if cached is not None:
            return cached
        contents = None
        try:
            contents = await gh.getitem(f"/repos/{repo}/contents/{CONFIG_PATH}")
        except gidgethub.BadRequest as exc:
            if exc.status_code != 404:
                raise
        config = await read_repo_config(contents)
        if config.warnings:
            log.warning("config %s: %s", repo, "; ".join(config.warnings), extra={"repo": repo})
        self.config_warnings[repo] = config.warnings
        self.config_cache[repo] = config
        return config

    async def installed(self, repo: str, installation_id: int | None) -> bool:
        """Is the app installed on ``repo``? Ask GitHub once if we never saw the installation event."""
        row = self.db.execute("SELECT installation_id FROM installations WHERE repo = ?", [repo]).fetchone()
        if row:
            return True
        if not installation_id or self.github is None:
            return False
        gh = await self.github.for_installation(installation_id)
        found = False
        async for item in gh.getiter("/installation/repositories?per_page=100", iterable_key="repositories"):
            self.db["installations"].upsert({"repo": item["full_name"], "installation_id": installation_id,
                                             "added_at": time.time()}, pk="repo")
            found = found or item["full_name"] == repo
        return found

    async def installation_for(self, repo: str) -> int:
        """The installation id for ``repo``: recorded from webhooks, else asked of GitHub with the App JWT."""
        row = self.db.execute("SELECT installation_id FROM installations WHERE repo = ?", [repo]).fetchone()
        if row:
            return row[0]
        from bot.github import USER_AGENT, GitHubAPI

        await self.start()
        app_gh = GitHubAPI(self.session, USER_AGENT, base_url=self.settings.api_url,
                           app_id=self.settings.app_id, private_key=self.settings.private_key)
        data = await app_gh.getitem(f"/repos/{repo}/installation")
        return data["id"]

    async def cli_context(self, repo: str, delivery_id: str) -> Context:
        """A handler context for a CLI command acting on one repository (backfill, digest)."""
        await self.start()
        return await self.context_for(repo, await self.installation_for(repo), delivery_id)

    async def context_for(self, repo: str, installation_id: int, delivery_id: str) -> Context:
        await self.start()
        gh = await self.github.for_installation(installation_id)
        config = await self.repo_config(gh, repo)
        return Context(db=self.db, settings=self.settings, repo=repo, installation_id=installation_id,
                       delivery_id=delivery_id, config=config, gh=gh, models=LazyModels(self), services=self)

    async def _check_installation(self, installation_id: int) -> None:
        """Raise ``queue.Unretryable`` when GitHub says the installation does not exist (404 for its token):
        the app was uninstalled, so no retry of this delivery can succeed."""
        try:
            await self.github.tokens.token(installation_id)
        except gidgethub.RateLimitExceeded:
            raise
        except gidgethub.BadRequest as exc:
            if exc.status_code == 404 or (exc.status_code == 403 and "suspended" in str(exc).lower()):
                gone = "suspended" if exc.status_code == 403 else "not found (uninstalled?)"
                self.db.execute("DELETE FROM installations WHERE installation_id = ?", [installation_id])
                raise queue.Unretryable(f"installation {installation_id} {gone}: GitHub answered "
                                        f"{exc.status_code} for its access token") from None
            raise

    async def handle_delivery(self, row: dict[str, Any]) -> None:
        """Run every matching handler for one stored delivery; raise if any failed (to retry).

        Each handler that finishes is recorded for the delivery, so a retry runs only the handlers that
        failed (a failing index update must not re-run triage: another model call, another label).
        """
        await self.start()
        payload = json.loads(row["payload"])
        event = gidgethub.sansio.Event(payload, event=row["event"], delivery_id=row["id"])
        extra = {"delivery": row["id"], "repo": row["repo"]}
        if is_bot_sender(payload, self.settings.app_slug):
            log.info("ignored %s.%s from a bot", row["event"], row["action"], extra=extra)
            return
        installation_id = (payload.get("installation") or {}).get("id")
        repo = row["repo"]
        if row["event"] in ("installation", "installation_repositories"):
            ctx = Context(db=self.db, settings=self.settings, repo=repo or "", installation_id=installation_id or 0,
                          delivery_id=row["id"], services=self)
            gh = None
        else:
            if not repo or not installation_id:
                log.info("ignored %s without repository/installation", row["event"], extra=extra)
                return
            await self._check_installation(installation_id)
            if not await self.installed(repo, installation_id):
                log.info("ignored %s for %s: app not installed there", row["event"], repo, extra=extra)
                return
            ctx = await self.context_for(repo, installation_id, row["id"])
            gh = ctx.gh
        done = queue.completed_handlers(self.db, row["id"])  # also after a crash: attempts is still 0
        errors = []
        for name, router in self.routers:
            for callback in router.fetch(event):
                handler = f"{name}.{callback.__name__}"
                if handler in done:
                    log.info("handler %s already finished for delivery %s; not run again", handler, row["id"],
                             extra=extra)
                    continue
                try:
                    await callback(event, gh, ctx)
                except Exception as exc:  # noqa: BLE001 - one handler must not stop the others
                    log.exception("handler %s failed on delivery %s", handler, row["id"], extra=extra)
                    errors.append(f"{handler}: {type(exc).__name__}: {exc}")
                else:
                    await self.worker.record_handler(row["id"], handler)
        if errors:
            raise RuntimeError("; ".join(errors))


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("background task %s failed: %s", task.get_name(), f"{type(exc).__name__}: {exc}"[:300],
                  exc_info=exc)


class ModelUnavailable(RuntimeError):
    """The model cascade could not be built (e.g. the GGUF at LOCAL_MODEL_PATH does not load)."""


class LazyModels:
    """``ctx.models`` for a handler: stands for ``services.models`` and loads it on first attribute use,
    so handlers that never touch the model never load it (nor fail when it cannot load)."""

    def __init__(self, services: "Services") -> None:
        self._services = services

    def __getattr__(self, name: str) -> Any:
        return getattr(self._services.models, name)

    def __bool__(self) -> bool:
        return True


class Intake:
    """What the HTTP side of one app keeps: the body memory budget, a database thread for /health and
    /metrics (so they answer while a write waits for a lock), and the worker task it watches."""

    def __init__(self, services: Services) -> None:
        self.budget = MemoryBudget(services.settings.webhook_memory_budget)
        self.health_db = DbThread(services.db, HEALTH_DB_BUSY_SECONDS, "health-db")
        self.worker_task: asyncio.Task | None = None
        self.busy_logged = 0.0

    def close(self) -> None:
        self.health_db.close()


INTAKE = web.AppKey("intake", Intake)
# Bounds on /health's database work (a load balancer gives a probe a few seconds). The webhook's write
# is bounded in queue.GroupCommit (queue.INTAKE_WRITE_SECONDS, under GitHub's 10 s).
HEALTH_DB_BUSY_SECONDS = 1.0
HEALTH_DB_SECONDS = 2.5
RETRY_AFTER_LOCKED = 30


def _answer(status: int, body: dict[str, Any], reason: str | None = None, services: Services | None = None,
            retry_after: int | None = None) -> web.Response:
    if reason and services is not None:
        services.metrics.rejected.labels(reason).inc()
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response(body, status=status, headers=headers)


async def webhook(request: web.Request) -> web.Response:
    """Verify, decode, store, answer 202: nothing is read before a well-formed signature header and a
    Content-Length under the cap, and nothing unverified is buffered beyond the shared memory budget."""
    services: Services = request.app[SERVICES]
    intake: Intake = request.app[INTAKE]
    event_name = request.headers.get("X-GitHub-Event")
    delivery_id = request.headers.get("X-GitHub-Delivery")
    body = None
    try:
        if well_formed_signature(request.headers.get("X-Hub-Signature-256")) and (not event_name or not delivery_id):
            missing = "X-GitHub-Event" if not event_name else "X-GitHub-Delivery"
            return _answer(400, {"error": f"missing {missing} header"}, "headers", services)
        body = await read_signed_body(request, services.settings.webhook_secret, intake.budget)
        payload, text = decode_payload(body.data, request.content_type)
    except Rejected as refused:
        if refused.status == 503 and time.monotonic() - intake.busy_logged > 10:
            # At most one line per 10 s: a flood must not turn into a flood of log lines.
            intake.busy_logged = time.monotonic()
            log.warning("webhook bodies over the memory budget (%d of %d bytes in flight): answering 503;"
                        " %d refused so far", intake.budget.reserved, intake.budget.limit, intake.budget.refused)
        return _answer(refused.status, {"error": refused.message}, refused.reason, services,
                       retry_after=refused.retry_after)
    except BadBody as exc:
        log.info("webhook %s refused: %s", delivery_id, exc)
        return _answer(400, {"error": str(exc)}, "malformed", services)
    finally:
        if body is not None:
            body.release()   # decoded: ``text`` and ``payload`` are what is kept from here on
    if event_name == "ping":
        return web.json_response({"ok": True, "zen": payload.get("zen")})
    try:
        # Group commit: resolves only after the transaction holding this delivery has committed.
        new = await queue.enqueue_async(services.db, delivery_id, event_name, payload, raw=text)
    except (sqlite3.Error, TimeoutError) as exc:
        error = str(exc) or "no answer in time"
        log.warning("delivery %s not stored: %s; answered 503", delivery_id, error, extra={"delivery": delivery_id})
        return _answer(503, {"error": f"delivery not stored ({error}); retry later"}, "db-unavailable", services,
                       retry_after=RETRY_AFTER_LOCKED)
    answer: dict[str, Any] = {"queued": new, "delivery": delivery_id}
    if new:
        services.metrics.received.labels(event_name).inc()
        services.worker.wake.set()
    else:
        original = queue.duplicate_of(services.db, delivery_id, event_name, text)
        if original:
            # 2xx, not 409: GitHub would show a 4xx as a failed delivery and redeliver it.
            log.info("delivery %s repeats delivery %s (same event and body); not queued", delivery_id, original,
                     extra={"delivery": delivery_id})
            answer["duplicate"] = "same event and body as an earlier delivery"
        else:
            answer["duplicate"] = "delivery id seen before"
    return web.json_response(answer, status=202)


def _bearer(request: web.Request, token: str) -> bool | None:
    """True: the request carries ``token``; False: it carries another; None: no token to check
    (none sent, or none configured). Compared in constant time."""
    header = request.headers.get("Authorization")
    if not header or not token:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8"))


def _unauthorized() -> web.Response:
    return web.json_response({"error": "wrong token"}, status=401, headers={"WWW-Authenticate": "Bearer"})


def _db_figures(db) -> dict[str, Any]:
    """Queue figures and whether a write could start now (runs in the health thread)."""
    pending, oldest = queue.depth(db)
    failed = db.execute("SELECT count(*) FROM deliveries WHERE status = 'failed'").fetchone()[0]
    conn, write_error = db.conn, None
    try:
        conn.execute("BEGIN IMMEDIATE")   # takes and drops the write lock: another writer shows as busy
    except sqlite3.Error as exc:
        write_error = str(exc)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return {"pending": pending, "oldest": oldest, "failed": failed, "write_error": write_error}


async def readiness(app: web.Application) -> tuple[bool, dict[str, str], list[str], dict[str, Any] | None]:
    """(ready, check -> status, problems, queue figures): the database answers and takes writes, the
    worker runs and reports no problem, the oldest pending delivery is younger than the bound."""
    services: Services = app[SERVICES]
    intake: Intake = app[INTAKE]
    checks: dict[str, str] = {}
    problems: list[str] = []
    figures = None
    try:
        figures = await asyncio.wait_for(intake.health_db.run(_db_figures, services.db), HEALTH_DB_SECONDS)
    except asyncio.TimeoutError:
        checks["database"] = "slow"
        problems.append(f"database did not answer within {HEALTH_DB_SECONDS} s")
    except sqlite3.Error as exc:
        checks["database"] = "error"
        problems.append(f"database: {exc}")
    else:
        checks["database"] = "ok" if figures["write_error"] is None else "locked"
        if figures["write_error"] is not None:
            problems.append(f"database takes no writes: {figures['write_error']}")
    # The worker restarts itself (queue.Worker.start): watch the task running now, not the first one.
    task = (getattr(services.worker, "_task", None) or intake.worker_task) if intake.worker_task is not None else None
    if task is None:
        checks["worker"] = "off"      # a server started without its worker (tests); nothing to watch
    elif task.done():
        checks["worker"] = "dead"
        error = None if task.cancelled() else task.exception()
        problems.append(f"worker task ended: {type(error).__name__}: {error}" if error else "worker task ended")
    else:
        checks["worker"] = "ok"
        report = getattr(services.worker, "problems", None)
        if callable(report):
            try:
                reported = report()
                if inspect.isawaitable(reported):
                    reported = await reported
            except Exception as exc:  # noqa: BLE001 - a failing self-check is itself a problem
                reported = [f"worker self-check failed: {type(exc).__name__}"]
            if reported:
                checks["worker"] = "failing"
                problems.extend(str(p)[:300] for p in list(reported)[:20])
    bound = services.settings.health_max_queue_age
    if figures is None:
        checks["queue"] = "unknown"
    elif figures["oldest"] is not None and figures["oldest"] > bound:
        checks["queue"] = "stalled"
        problems.append(f"oldest pending delivery is {figures['oldest']:.0f} s old (bound {bound:.0f} s)")
    else:
        checks["queue"] = "ok"
    ready = all(status in ("ok", "off") for status in checks.values())
    return ready, checks, problems, figures


def _capped(warnings: dict[str, list[str]]) -> dict[str, list[str]]:
    """Config warnings for the answer, bounded (they quote repository files)."""
    return {repo[:200]: [str(w)[:300] for w in ws[:50]] for repo, ws in list(warnings.items())[:500] if ws}


async def health_live(request: web.Request) -> web.Response:
    """Liveness: the process answers. Public, says nothing else."""
    return web.json_response({"ok": True})


async def health(request: web.Request) -> web.Response:
    """Readiness: 200 when ready, else 503. The public answer names checks only (no repositories,
    config or installations); ``Authorization: Bearer $HEALTH_TOKEN`` adds the details."""
    services: Services = request.app[SERVICES]
    settings = services.settings
    authorized = _bearer(request, settings.health_token)
    if authorized is False:
        return _unauthorized()
    ready, checks, problems, figures = await readiness(request.app)
    body: dict[str, Any] = {"ok": ready, "checks": checks}
    if not authorized:
        body["details"] = ("send Authorization: Bearer <HEALTH_TOKEN> for details" if settings.health_token
                           else "details are off: set HEALTH_TOKEN to enable them")
        return web.json_response(body, status=200 if ready else 503)
    intake: Intake = request.app[INTAKE]
    body.update({
        "problems": problems,
        "queue_depth": figures["pending"] if figures else None,
        "oldest_pending_age_seconds": round(figures["oldest"], 3) if figures and figures["oldest"] else None,
        "failed_deliveries": figures["failed"] if figures else None,
        "dry_run": settings.dry_run,
        "config_warnings": _capped(services.config_warnings),
        "intake": {"memory_budget_bytes": intake.budget.limit, "bodies_in_flight_bytes": intake.budget.reserved,
                   "peak_bytes": intake.budget.peak, "refused_busy": intake.budget.refused},
    })
    try:
        from bot.features.learning import drift_warnings

        drift = await asyncio.wait_for(intake.health_db.run(drift_warnings, services.db), HEALTH_DB_SECONDS)
    except Exception:  # noqa: BLE001 - health must answer even if the figures cannot be computed
        log.warning("drift figures failed", exc_info=True)
        drift = []
    if drift:
        body["drift_warnings"] = [str(w)[:300] for w in drift[:100]]
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text. Public: no series labelled by installation or repository (those are folded
    into one unlabelled value); ``Authorization: Bearer $METRICS_TOKEN`` gets every series."""
    services: Services = request.app[SERVICES]
    intake: Intake = request.app[INTAKE]
    settings = services.settings
    authorized = _bearer(request, settings.metrics_token)
    if authorized is False:
        return _unauthorized()
    try:
        pending, _oldest = await asyncio.wait_for(intake.health_db.run(queue.depth, services.db), HEALTH_DB_SECONDS)
        services.metrics.queue_depth.set(pending)
    except (sqlite3.Error, asyncio.TimeoutError):
        pass  # the last figure stands; /health says why
    text = services.metrics.render(public=not authorized)
    if not authorized:
        text += (b"# per-installation series: send Authorization: Bearer <METRICS_TOKEN>\n" if settings.metrics_token
                 else b"# per-installation series are off: set METRICS_TOKEN to enable them\n")
    return web.Response(body=text, content_type="text/plain", charset="utf-8")


def create_app(services: Services, *, run_worker: bool = True) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICES] = services
    intake = app[INTAKE] = Intake(services)
    app.router.add_post("/webhook", webhook)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", health_live)
    app.router.add_get("/metrics", metrics)

    async def lifecycle(app: web.Application):
        await services.start()
        worker_task = services.worker.start() if run_worker else None  # supervised: restarted if it ends
        if worker_task is not None:
            intake.worker_task = worker_task  # queue.Worker logs an unexpected end and restarts the task
        schedulers = []
        if services.settings.schedule:
            try:
                from bot.scheduler import start_schedulers
            except ImportError:
                pass
            else:
                schedulers = start_schedulers(services)
        yield
        for task in schedulers:
            task.cancel()
        if worker_task is not None:
            await services.worker.stop()  # cancels the task running now (it may have been restarted)
            worker_task.cancel()
        await asyncio.gather(*schedulers, return_exceptions=True)
        await services.close()
        intake.close()
        queue.close_group_commit(services.db)

    app.cleanup_ctx.append(lifecycle)
    return app
