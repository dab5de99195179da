"""Shared test fixtures: the GitHub stand-in, the bot's real server on loopback, signed webhook
deliveries built from GitHub's published examples, a fresh SQLite file, and the FakeModel.

One stand-in for every test (bedevere gave each test file its own fake GitHub; we do not).
"""
from __future__ import annotations

import copy
import json
import socket
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.app import Services, create_app, signature_for
from bot.config import Settings
from tests.standin import GitHubStandIn, generate_app_key

DATA = Path(__file__).parent / "data"
WEBHOOKS = DATA / "webhooks"
APP_ID = 4242
INSTALLATION_ID = 1
REPO = "octo-org/hello"
SECRET = "test-webhook-secret"


@pytest.fixture(scope="session")
def app_key() -> tuple[str, str]:
    """(private PEM, public PEM) made for this test run; the stand-in verifies JWTs with it."""
    return generate_app_key()


@pytest.fixture
async def standin(app_key):
    """A GitHub stand-in with one installed repo (octo-org/hello) and GitHub's default labels."""
    github = GitHubStandIn(public_key=app_key[1], app_id=APP_ID, app_slug="first-responder")
    await github.start()
    github.add_repo(REPO)
    github.add_installation(INSTALLATION_ID, [REPO])
    for label in ("bug", "enhancement", "question", "documentation", "duplicate", "security", "needs-triage"):
        github.add_label(REPO, label)
    github.set_permission(REPO, "maint", "maintain")
    yield github
    await github.stop()
    assert github.violations == [], f"requests the GitHub OpenAPI description rejects: {github.violations}"
    assert github.response_violations == [], f"stand-in answers off the spec: {github.response_violations}"


@pytest.fixture
def settings(tmp_path, standin, app_key) -> Settings:
    return Settings(app_id=str(APP_ID), private_key=app_key[0], webhook_secret=SECRET, api_url=standin.url,
                    database_path=str(tmp_path / "bot.db"), host="127.0.0.1", port=0, write_spacing=0.0,
                    schedule=False, max_attempts=3)


def load_example(name: str) -> dict[str, Any]:
    """A GitHub published webhook example (tests/data/webhooks/<event>.<action>.json)."""
    return json.loads((WEBHOOKS / f"{name}.json").read_text())


def event_payload(name: str, *, repo: str = REPO, issue: dict | None = None, comment: dict | None = None,
                  sender: str = "alice", sender_type: str = "User", **extra: Any) -> dict[str, Any]:
    """GitHub's example for ``name`` re-pointed at our repo, issue, comment and sender."""
    payload = copy.deepcopy(load_example(name))
    owner, repo_name = repo.split("/")
    if "repository" in payload:
        payload["repository"].update({"full_name": repo, "name": repo_name})
        payload["repository"].setdefault("owner", {})["login"] = owner
    payload["installation"] = {"id": INSTALLATION_ID, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="}
    payload["sender"] = {**payload.get("sender", {}), "login": sender, "type": sender_type}
    if issue is not None:
        payload["issue"] = {**payload.get("issue", {}), **issue}
    if comment is not None:
        payload["comment"] = {**payload.get("comment", {}), **comment}
    payload.update(extra)
    return payload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BotServer:
    """The real aiohttp app on 127.0.0.1, and a client that sends signed deliveries to it."""

    def __init__(self, services: Services, url: str, session: aiohttp.ClientSession):
        self.services = services
        self.url = url
        self.session = session
        self.db = services.db

    async def send(self, event: str, payload: dict | bytes, *, delivery: str | None = None,
                   secret: str | None = SECRET, headers: dict | None = None) -> aiohttp.ClientResponse:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        hdrs = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/test"}
        if secret is not None:
            hdrs["X-Hub-Signature-256"] = signature_for(secret, body)
        hdrs.update(headers or {})
        hdrs = {k: v for k, v in hdrs.items() if v is not None}
        async with self.session.post(f"{self.url}/webhook", data=body, headers=hdrs) as resp:
            await resp.read()
            return resp

    async def drain(self, timeout: float = 30.0) -> None:
        await self.services.worker.drain(timeout)


async def start_server(settings: Settings, *, models: Any = None, run_worker: bool = True, port: int | None = None):
    services = Services(settings, models=models)
    app = create_app(services, run_worker=run_worker)
    runner = web.AppRunner(app)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    session = aiohttp.ClientSession()
    return BotServer(services, f"http://127.0.0.1:{port}", session), runner


@pytest.fixture
async def fake_model():
    from bot.models.base import FakeModel

    return FakeModel()


@pytest.fixture
async def bot(settings, fake_model):
    """The bot's server with the FakeModel as its model layer (the real GGUF has its own tests)."""
    server, runner = await start_server(settings, models=fake_model)
    yield server
    await server.session.close()
    await runner.cleanup()
