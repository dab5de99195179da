"""The webhook intake against hostile input and faults (issue #11 items 7, 8, 9, 11, 19): what an
anonymous sender can read or cost, replayed bodies, a database another process holds, odd bodies.

Real parts only: the bot's aiohttp server on 127.0.0.1, raw sockets for half-sent requests, a real
SQLite file and a second Python process holding its write lock."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import uuid

import aiohttp
from gidgethub.routing import Router

from bot import app as bot_app
from bot.app import signature_for
from bot.db import open_db
from tests.conftest import INSTALLATION_ID, REPO, SECRET, event_payload, start_server

HEALTH_TOKEN = "health-token-for-tests"
METRICS_TOKEN = "metrics-token-for-tests"


def record_issue_events(server) -> list[tuple[str, dict]]:
    """A minimal feature that records what the worker handed it (delivery id, parsed payload)."""
    seen: list[tuple[str, dict]] = []
    router = Router()

    @router.register("issues")
    async def on_issue(event, gh, ctx):
        seen.append((event.delivery_id, event.data))

    server.services.routers.append(("recorder", router))
    return seen


def opened(standin, title="Crash on start"):
    issue = standin.add_issue(REPO, title, "It crashes.")
    return event_payload("issues.opened", issue={"number": issue["number"], "title": title})


async def get(server, path: str, token: str | None = None) -> tuple[int, str, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with server.session.get(f"{server.url}{path}", headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def post_raw(server, body: bytes, *, content_type: str = "application/json", event: str = "issues",
                   delivery: str | None = None, signature: str | None = "sign") -> tuple[int, dict, dict]:
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": content_type}
    if signature == "sign":
        headers["X-Hub-Signature-256"] = signature_for(SECRET, body)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with server.session.post(f"{server.url}/webhook", data=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text.startswith("{") else {"text": text}), dict(resp.headers)


def stored(server) -> int:
    return server.db.execute("SELECT count(*) FROM deliveries").fetchone()[0]


# ---------------------------------------------------------------- item 7: /health and /metrics


async def test_public_health_names_no_repository_and_details_need_the_token(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", "triage:\n  treshold: 0.5\n")
    await bot.send("issues", opened(standin))
    await bot.drain()
    assert bot.services.config_warnings[REPO]  # there is something to leak
    status, text, _ = await get(bot, "/health")
    assert status == 200
    assert REPO not in text and "octo-org" not in text and "treshold" not in text
    body = json.loads(text)
    assert body["ok"] is True and set(body["checks"]) == {"database", "worker", "queue"}
    assert "set HEALTH_TOKEN" in body["details"]
    # No token configured: a bearer token changes nothing.
    status, text, _ = await get(bot, "/health", token="guess")
    assert status == 200 and REPO not in text
    # With HEALTH_TOKEN: a wrong token is refused, the right one gets the details.
    bot.services.settings.health_token = HEALTH_TOKEN
    status, text, headers = await get(bot, "/health", token="guess")
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer" and REPO not in text
    status, text, _ = await get(bot, "/health")
    assert status == 200 and REPO not in text and "Bearer <HEALTH_TOKEN>" in json.loads(text)["details"]
    status, text, _ = await get(bot, "/health", token=HEALTH_TOKEN)
    details = json.loads(text)
    assert status == 200 and any(warning.startswith("triage.treshold: unknown key, ignored")
                                 for warning in details["config_warnings"][REPO])
    assert details["queue_depth"] == 0 and details["problems"] == []
    status, text, _ = await get(bot, "/health/live")
    assert status == 200 and json.loads(text) == {"ok": True}


async def test_public_metrics_carry_no_installation_series(bot, standin):
    await bot.send("issues", opened(standin))
    await bot.drain()
    bot.services.settings.metrics_token = METRICS_TOKEN
    status, full, _ = await get(bot, "/metrics", token=METRICS_TOKEN)
    assert status == 200 and f'installation="{INSTALLATION_ID}"' in full  # the bot did call GitHub
    status, public, _ = await get(bot, "/metrics")
    assert status == 200
    assert "installation=" not in public and "repo=" not in public and REPO not in public
    # The rate limit is still there, as one unlabelled value (the lowest across installations).
    assert any(line.startswith("fr_github_rate_limit_remaining ") for line in public.splitlines())
    assert 'fr_deliveries_received_total{event="issues"} 1.0' in public
    status, _, _ = await get(bot, "/metrics", token="guess")
    assert status == 401


async def test_health_is_not_ready_when_the_worker_task_is_dead(settings):
    server, runner = await start_server(settings)
    try:
        status, _, _ = await get(server, "/health")
        assert status == 200
        worker_task = runner.app[bot_app.INTAKE].worker_task
        worker_task.cancel()
        await asyncio.gather(worker_task, return_exceptions=True)
        status, text, _ = await get(server, "/health")
        assert status == 503
        body = json.loads(text)
        assert body["ok"] is False and body["checks"]["worker"] == "dead"
    finally:
        await server.session.close()
        await runner.cleanup()


async def test_health_is_not_ready_when_the_worker_reports_a_problem(bot):
    # Worker.problems() is the worker's own self-check (its supervisor fills it); /health reads it.
    bot.services.worker.problems = lambda: [f"handler for {REPO} keeps failing"]
    bot.services.settings.health_token = HEALTH_TOKEN
    status, text, _ = await get(bot, "/health")
    assert status == 503 and json.loads(text)["checks"]["worker"] == "failing" and REPO not in text
    status, text, _ = await get(bot, "/health", token=HEALTH_TOKEN)
    assert status == 503 and json.loads(text)["problems"] == [f"handler for {REPO} keeps failing"]


async def test_health_is_not_ready_when_the_oldest_pending_delivery_is_too_old(bot, standin):
    await bot.send("issues", opened(standin), delivery="old-one")
    await bot.drain()
    status, _, _ = await get(bot, "/health")
    assert status == 200
    # Pending for 20 minutes (and not due: as if stuck behind a backoff), bound 15 minutes.
    bot.db.execute("UPDATE deliveries SET status = 'pending', received_at = ?, next_attempt_at = ? WHERE id = ?",
                   [time.time() - 1200, time.time() + 3600, "old-one"])
    status, text, _ = await get(bot, "/health")
    assert status == 503 and json.loads(text)["checks"]["queue"] == "stalled"
    bot.services.settings.health_max_queue_age = bot.services.worker.stall_after = 3600
    status, _, _ = await get(bot, "/health")
    assert status == 200


# ---------------------------------------------------------------- item 8: replayed bodies


async def test_the_same_body_under_a_new_delivery_id_is_stored_once(bot, standin):
    seen = record_issue_events(bot)
    body = json.dumps(opened(standin)).encode()
    first = await post_raw(bot, body, delivery="original")
    replay = await post_raw(bot, body, delivery="replayed")
    again = await post_raw(bot, body, delivery="original")
    assert first[0] == 202 and first[1]["queued"] is True
    assert replay[0] == 202 and replay[1]["queued"] is False and "same event and body" in replay[1]["duplicate"]
    assert again[0] == 202 and again[1]["queued"] is False and "id seen before" in again[1]["duplicate"]
    await bot.drain()
    assert [delivery for delivery, _ in seen] == ["original"]
    assert stored(bot) == 1
    # The same body as another event is another delivery.
    other = await post_raw(bot, body, event="issue_comment", delivery="other-event")
    assert other[1]["queued"] is True


def test_an_older_database_gains_the_body_hash_column(tmp_path):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE deliveries (id TEXT PRIMARY KEY, event TEXT NOT NULL, action TEXT, repo TEXT,"
                 " issue INTEGER, installation_id INTEGER, status TEXT NOT NULL DEFAULT 'pending',"
                 " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0,"
                 " received_at REAL NOT NULL, finished_at REAL, error TEXT)")
    conn.execute("INSERT INTO deliveries (id, event, received_at) VALUES ('a', 'issues', 1), ('b', 'issues', 2)")
    conn.commit()
    conn.close()
    db = open_db(path)
    open_db(path)  # re-running the migration is harmless
    columns = {row[1] for row in db.execute("PRAGMA table_info(deliveries)").fetchall()}
    assert "body_sha256" in columns
    assert db.execute("SELECT count(*) FROM deliveries WHERE body_sha256 IS NULL").fetchone()[0] == 2


# ---------------------------------------------------------------- item 9: unauthenticated memory


async def hold_open(url: str, declared: int, sent: int, signature: str) -> asyncio.StreamWriter:
    """A POST that declares ``declared`` bytes, sends ``sent`` of them and then waits."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST /webhook HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"X-GitHub-Event: issues\r\nX-GitHub-Delivery: {uuid.uuid4()}\r\n"
                  f"X-Hub-Signature-256: {signature}\r\nContent-Length: {declared}\r\n\r\n").encode())
    writer.write(b"{" + b" " * (sent - 1))
    await writer.drain()
    writer.reader = reader  # keep it alive with the writer
    return writer


async def test_bodies_in_flight_are_bounded_by_the_memory_budget(settings, standin):
    size = 1024 * 1024
    settings.webhook_memory_budget = 16 * size
    server, runner = await start_server(settings)
    intake = runner.app[bot_app.INTAKE]
    forged = "sha256=" + "0" * 64
    held = []
    try:
        # Sixteen anonymous 1 MB posts with a forged signature, held open half-sent: the budget is spent.
        for _ in range(16):
            held.append(await hold_open(server.url, size, 64 * 1024, forged))
        deadline = time.monotonic() + 30
        while intake.budget.reserved < 16 * size and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert intake.budget.reserved == 16 * size
        # The seventeenth is refused before its body is read, and says when to come back.
        status, body, headers = await post_raw(server, b"{" + b" " * (size - 1), signature=forged)
        assert status == 503 and "retry later" in body["error"] and headers["Retry-After"]
        # No signature header at all: refused unread, whatever its size, even now.
        status, _, _ = await post_raw(server, b"{" + b" " * (4 * size), signature=None)
        assert status == 401
        assert intake.budget.peak <= intake.budget.limit
        for writer in held:
            writer.close()
        held = []
        deadline = time.monotonic() + 30
        while intake.budget.reserved and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert intake.budget.reserved == 0  # every reservation came back when its sender went away
        resp = await server.send("issues", opened(standin))
        assert resp.status == 202
    finally:
        for writer in held:
            writer.close()
        await server.session.close()
        await runner.cleanup()


async def test_a_signature_header_that_cannot_be_right_is_refused_unread(settings):
    server, runner = await start_server(settings)
    try:
        for header in (None, "sha1=abc", "sha256=" + "z" * 64, "sha256=" + "0" * 63):
            status, _, _ = await post_raw(server, b"{" + b" " * (2 * 1024 * 1024) + b"}", signature=header)
            assert status == 401
        assert runner.app[bot_app.INTAKE].budget.peak == 0  # not one body byte was buffered
        assert stored(server) == 0
    finally:
        await server.session.close()
        await runner.cleanup()


# ---------------------------------------------------------------- item 11: the database held by another process

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


async def test_a_database_locked_by_another_process_gives_503_and_health_keeps_answering(bot, standin, settings):
    seen = record_issue_events(bot)
    assert (await bot.send("issues", opened(standin, "before"))).status == 202
    await bot.drain()
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, settings.database_path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        # GitHub waits 10 s for an answer; the webhook must answer within that, and not hold the loop.
        github_patience = aiohttp.ClientTimeout(total=10)
        body = json.dumps(opened(standin, "during")).encode()
        headers = {"X-GitHub-Event": "issues", "X-GitHub-Delivery": "during-lock", "Content-Type": "application/json",
                   "X-Hub-Signature-256": signature_for(SECRET, body)}

        async def webhook():
            async with bot.session.post(f"{bot.url}/webhook", data=body, headers=headers,
                                        timeout=github_patience) as resp:
                return resp.status, await resp.json(), resp.headers.get("Retry-After")

        async def health():
            async with bot.session.get(f"{bot.url}/health", timeout=github_patience) as resp:
                return resp.status, await resp.json()

        webhook_task = asyncio.create_task(webhook())
        await asyncio.sleep(0.05)  # the webhook's write is now waiting for the lock
        health_task = asyncio.create_task(health())
        done, _ = await asyncio.wait({webhook_task, health_task}, return_when=asyncio.FIRST_COMPLETED)
        assert health_task in done, "/health waited behind the webhook's write"
        status, report = health_task.result()
        assert status == 503 and report["checks"]["database"] == "locked"
        status, answer, retry_after = await webhook_task
        assert status == 503 and "not stored" in answer["error"] and retry_after
        status, _, _ = await get(bot, "/health/live")
        assert status == 200
    finally:
        locker.communicate("\n", timeout=30)
    assert (await bot.send("issues", opened(standin, "after"), delivery="after-lock")).status == 202
    await bot.drain()
    status, _, _ = await get(bot, "/health")
    assert status == 200
    titles = [data["issue"]["title"] for _delivery, data in seen]
    assert titles == ["before", "after"]


# ---------------------------------------------------------------- item 19: odd bodies


async def test_deep_and_utf16_bodies_are_400_and_store_nothing(bot, standin):
    payload = opened(standin)
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        json.dumps({**payload, "deep": json.loads("[" * 500 + "]" * 500)}).encode(),
        json.dumps(payload).encode("utf-16"),
        json.dumps(payload).encode("utf-16-le"),
        json.dumps(payload).encode("utf-8") + b"\xff",
    ]
    for body in bodies:
        status, answer, _ = await post_raw(bot, body)
        assert status == 400 and answer["error"], body[:20]
    assert stored(bot) == 0


async def test_a_utf8_bom_body_is_accepted_and_processed(bot, standin):
    seen = record_issue_events(bot)
    payload = opened(standin, "with a BOM")
    status, answer, _ = await post_raw(bot, b"\xef\xbb\xbf" + json.dumps(payload).encode(), delivery="bom")
    assert status == 202 and answer["queued"] is True
    await bot.drain()
    row = bot.db.execute("SELECT status, attempts, error FROM deliveries WHERE id = 'bom'").fetchone()
    assert row == ("done", 1, None)
    assert [data["issue"]["title"] for _delivery, data in seen] == ["with a BOM"]


async def test_a_form_encoded_payload_is_accepted(bot, standin):
    seen = record_issue_events(bot)
    payload = opened(standin, "sent as a form")
    form = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    status, answer, _ = await post_raw(bot, form, content_type="application/x-www-form-urlencoded", delivery="form")
    assert status == 202 and answer["queued"] is True
    await bot.drain()
    assert [data["issue"]["title"] for _delivery, data in seen] == ["sent as a form"]
    stored_text = bot.db.execute("SELECT payload FROM delivery_payloads WHERE id = 'form'").fetchone()[0]
    assert json.loads(stored_text) == payload
    # The signature covers the form as sent; a form without a payload field is a clear 400.
    status, _, _ = await post_raw(bot, form, content_type="application/x-www-form-urlencoded",
                                  signature=signature_for("wrong", form))
    assert status == 401
    status, answer, _ = await post_raw(bot, b"other=1", content_type="application/x-www-form-urlencoded")
    assert status == 400 and "payload" in answer["error"]
