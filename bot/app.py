"""The web server: verify, enqueue, answer 202; plus /health and /metrics, and the worker that
turns stored deliveries into handler calls.

The webhook path does as little as possible (GitHub waits at most 10 s): check the signature in
constant time, parse, store the delivery durably, answer. Everything else happens in the worker.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any

import aiohttp
import cachetools
import gidgethub
import gidgethub.sansio
from aiohttp import web

from bot import queue
from bot.config import CONFIG_PATH, RepoConfig, Settings, parse_repo_config
from bot.context import Context
from bot.db import open_db
from bot.features import load_routers
from bot.github import GitHubFactory
from bot.metrics import Metrics

log = logging.getLogger(__name__)

MAX_BODY = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB
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

            models = wrap(models, self.db)
        self._models = models
        self._models_lock = threading.Lock()
        self.config_cache: cachetools.TTLCache = cachetools.TTLCache(maxsize=1000, ttl=300)
        self.config_warnings: dict[str, list[str]] = {}
        self.worker = queue.Worker(self.db, self.handle_delivery, concurrency=settings.worker_concurrency,
                                   max_attempts=settings.max_attempts, metrics=self.metrics,
                                   busy_timeout=settings.worker_busy_timeout)
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
        cached = self.config_cache.get(repo)
        if cached is not None:
            return cached
        text = None
        try:
            data = await gh.getitem(f"/repos/{repo}/contents/{CONFIG_PATH}")
            if isinstance(data, dict) and data.get("content"):
                text = base64.b64decode(data["content"]).decode("utf-8", errors="replace")
        except gidgethub.BadRequest as exc:
            if exc.status_code != 404:
                raise
        config = parse_repo_config(text)
        for warning in config.warnings:
            log.warning("config %s: %s", repo, warning)
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


async def webhook(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    settings = services.settings
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        services.metrics.rejected.labels("too-large").inc()
        return web.json_response({"error": "payload over GitHub's 25 MB cap"}, status=413)
    if not verify_signature(settings.webhook_secret, body, request.headers.get("X-Hub-Signature-256")):
        services.metrics.rejected.labels("signature").inc()
        reason = "missing" if not request.headers.get("X-Hub-Signature-256") else "invalid"
        return web.json_response({"error": f"{reason} X-Hub-Signature-256"}, status=401)
    event_name = request.headers.get("X-GitHub-Event")
    delivery_id = request.headers.get("X-GitHub-Delivery")
    if not event_name or not delivery_id:
        services.metrics.rejected.labels("headers").inc()
        missing = "X-GitHub-Event" if not event_name else "X-GitHub-Delivery"
        return web.json_response({"error": f"missing {missing} header"}, status=400)
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError("payload is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        services.metrics.rejected.labels("malformed").inc()
        return web.json_response({"error": f"malformed JSON: {str(exc).splitlines()[0][:200]}"}, status=400)
    if event_name == "ping":
        return web.json_response({"ok": True, "zen": payload.get("zen")})
    # Group commit: resolves only after the transaction holding this delivery has committed.
    new = await queue.enqueue_async(services.db, delivery_id, event_name, payload, raw=body)
    if new:
        services.metrics.received.labels(event_name).inc()
        services.worker.wake.set()
    return web.json_response({"queued": new, "delivery": delivery_id}, status=202)


async def health(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    try:
        pending, oldest = queue.depth(services.db)
        failed = services.db.execute("SELECT count(*) FROM deliveries WHERE status = 'failed'").fetchone()[0]
        db_ok = True
    except Exception:  # noqa: BLE001
        pending, oldest, failed, db_ok = None, None, None, False
    body = {
        "ok": db_ok, "db": "ok" if db_ok else "error", "queue_depth": pending,
        "oldest_pending_age_seconds": round(oldest, 3) if oldest is not None else None,
        "failed_deliveries": failed,
        "dry_run": services.settings.dry_run,
        "config_warnings": {repo: w for repo, w in services.config_warnings.items() if w},
    }
    try:
        from bot.features.learning import drift_warnings

        drift = drift_warnings(services.db)
    except Exception:  # noqa: BLE001 - health must answer even if the figures cannot be computed
        log.exception("drift figures failed")
        drift = []
    if drift:
        body["drift_warnings"] = drift
    return web.json_response(body, status=200 if db_ok else 503)


async def metrics(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    services.metrics.queue_depth.set(queue.depth(services.db)[0])
    return web.Response(body=services.metrics.render(), content_type="text/plain", charset="utf-8")


def create_app(services: Services, *, run_worker: bool = True) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICES] = services
    app.router.add_post("/webhook", webhook)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)

    async def lifecycle(app: web.Application):
        await services.start()
        worker_task = services.worker.start() if run_worker else None  # supervised: restarted if it ends
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
            await services.worker.stop()
            worker_task.cancel()
            await asyncio.gather(worker_task, *schedulers, return_exceptions=True)
        await services.close()

    app.cleanup_ctx.append(lifecycle)
    return app
