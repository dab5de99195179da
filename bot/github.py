"""Talking to GitHub as an App: JWT, cached installation tokens, and a polite HTTP client.

GitHub does not retry failed webhook deliveries by itself and punishes bursts of writes with
secondary rate limits, so the client here retries what is safe to retry, waits when GitHub says
wait, and spaces content-creating requests per installation (GitHub asks for about one a second).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
import cachetools
import gidgethub.aiohttp
import gidgethub.apps

from bot.config import Settings
from bot.metrics import DEFAULT as DEFAULT_METRICS, Metrics

log = logging.getLogger(__name__)

USER_AGENT = "first-responder"
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}
MAX_RETRIES = 4
MAX_WAIT = 900.0  # never park a worker longer than this on one request


def _retry_after(headers: Mapping[str, str], body: bytes, attempt: int) -> float | None:
    """How long GitHub asks us to wait, or None if the response is not a rate limit."""
    if "retry-after" in headers:
        try:
            return float(headers["retry-after"])
        except ValueError:
            return 60.0
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        return max(0.0, float(headers["x-ratelimit-reset"]) - time.time()) + 1
    if b"secondary rate limit" in body.lower():
        return 60.0 * attempt  # GitHub: wait at least a minute, growing
    return None


class WriteSpacer:
    """Keeps content-creating requests of one installation at least ``spacing`` seconds apart."""

    def __init__(self, spacing: float) -> None:
        self.spacing = spacing
        self._next: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def wait(self, installation_id: int) -> None:
        if self.spacing <= 0:
            return
        lock = self._locks.setdefault(installation_id, asyncio.Lock())
        async with lock:
            delay = self._next.get(installation_id, 0.0) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next[installation_id] = time.monotonic() + self.spacing


class GitHubAPI(gidgethub.aiohttp.GitHubAPI):
    """gidgethub's client plus retries, rate-limit waits, write spacing and token refresh."""

    def __init__(self, session: aiohttp.ClientSession, *args: Any, installation_id: int = 0,
                 tokens: "TokenProvider | None" = None, spacer: WriteSpacer | None = None,
                 metrics: Metrics | None = None, **kwargs: Any) -> None:
        super().__init__(session, *args, **kwargs)
        self.installation_id = installation_id
        self.tokens = tokens
        self.spacer = spacer
        self.metrics = metrics or DEFAULT_METRICS
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(seconds)

    async def _request(self, method: str, url: str, headers: Mapping[str, str],
                       body: bytes = b"") -> tuple[int, Mapping[str, str], bytes]:
        headers = dict(headers)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            if method in WRITE_METHODS and self.spacer is not None:
                await self.spacer.wait(self.installation_id)
            try:
                status, resp_headers, data = await super()._request(method, url, headers, body)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                self.metrics.api_calls.labels(method, "connection-error").inc()
                if attempt > MAX_RETRIES:
                    raise
                wait = min(2 ** attempt, 30) + random.random()
                log.warning("GitHub %s %s: %s; retry in %.1fs", method, _path(url), type(exc).__name__, wait)
                await self.sleep(wait)
                continue
            self.metrics.api_calls.labels(method, str(status)).inc()
            remaining = resp_headers.get("x-ratelimit-remaining")
            if remaining is not None:
                self.metrics.rate_remaining.labels(str(self.installation_id)).set(float(remaining))
                if remaining.isdigit() and int(remaining) < 100:
                    log.warning("GitHub rate limit low: %s requests left for installation %s",
                                remaining, self.installation_id)
            if status == 401 and self.tokens is not None and not refreshed and "/access_tokens" not in url:
                refreshed = True
                self.tokens.invalidate(self.installation_id)
                token = await self.tokens.token(self.installation_id)
                self.oauth_token = token
                headers["authorization"] = f"token {token}"
                continue
            if status in (403, 429):
                wait = _retry_after(resp_headers, data, attempt)
                if wait is not None and attempt <= MAX_RETRIES:
                    wait = min(wait, MAX_WAIT)
                    log.warning("GitHub rate limited %s %s (%s); waiting %.0fs", method, _path(url), status, wait)
                    await self.sleep(wait)
                    continue
            if status >= 500 and attempt <= MAX_RETRIES:
                wait = min(2 ** attempt, 30) * (0.5 + random.random() / 2)
                log.warning("GitHub %s %s answered %s; retry in %.1fs", method, _path(url), status, wait)
                await self.sleep(wait)
                continue
            if status == 200 and remaining == "0" and "x-ratelimit-reset" in resp_headers:
                # Out of quota: the next call would fail, so wait for the reset now.
                wait = min(max(0.0, float(resp_headers["x-ratelimit-reset"]) - time.time()) + 1, MAX_WAIT)
                log.warning("GitHub quota used up; waiting %.0fs for the reset", wait)
                await self.sleep(wait)
            return status, resp_headers, data


def _path(url: str) -> str:
    """The path of a URL, for logs (never the query, which may carry search text)."""
    return url.split("?", 1)[0]


class TokenProvider:
    """Installation access tokens, cached until a few minutes before they expire."""

    REFRESH_MARGIN = 300  # seconds before expiry that a token counts as stale

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, metrics: Metrics | None = None):
        self.settings = settings
        self.session = session
        self.metrics = metrics
        self._cache: cachetools.TTLCache = cachetools.TTLCache(maxsize=10_000, ttl=3600)
        self._locks: dict[int, asyncio.Lock] = {}

    def invalidate(self, installation_id: int) -> None:
        self._cache.pop(installation_id, None)

    async def token(self, installation_id: int) -> str:
        lock = self._locks.setdefault(installation_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(installation_id)
            if cached and cached[1] - time.time() > self.REFRESH_MARGIN:
                return cached[0]
            app_gh = GitHubAPI(self.session, USER_AGENT, base_url=self.settings.api_url, metrics=self.metrics)
            data = await gidgethub.apps.get_installation_access_token(
                app_gh, installation_id=str(installation_id), app_id=self.settings.app_id,
                private_key=self.settings.private_key,
            )
            expires = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00")).timestamp()
            self._cache[installation_id] = (data["token"], expires)
            return data["token"]


class GitHubFactory:
    """Builds an installation-scoped client; shared session, token cache and write spacing."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, metrics: Metrics | None = None):
        self.settings = settings
        self.session = session
        self.metrics = metrics or DEFAULT_METRICS
        self.tokens = TokenProvider(settings, session, self.metrics)
        self.spacer = WriteSpacer(settings.write_spacing)
        # ETag cache shared by the installation clients: conditional requests cost no quota on 304.
        self.etags: cachetools.LRUCache = cachetools.LRUCache(maxsize=2000)

    async def for_installation(self, installation_id: int) -> GitHubAPI:
        token = await self.tokens.token(installation_id)
        return GitHubAPI(self.session, USER_AGENT, oauth_token=token, base_url=self.settings.api_url,
                         installation_id=installation_id, tokens=self.tokens, spacer=self.spacer,
                         metrics=self.metrics, cache=self.etags)

    def for_app(self) -> GitHubAPI:
        """A client for the App's own endpoints (``/app/...``); pass ``jwt=self.app_jwt()`` on each call."""
        return GitHubAPI(self.session, USER_AGENT, base_url=self.settings.api_url, metrics=self.metrics)

    def app_jwt(self) -> str:
        """A fresh App JWT (valid 10 minutes), signed with the App's private key."""
        return gidgethub.apps.get_jwt(app_id=self.settings.app_id, private_key=self.settings.private_key)
