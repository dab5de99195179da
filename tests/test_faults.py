"""Process-level faults (issue #11, "evidence to add"): the real server (`python -m bot serve`) as a
subprocess against the GitHub stand-in, killed with SIGKILL in the middle of a burst of signed webhooks
and restarted; and its database on a tiny tmpfs that fills up. Nothing acknowledged may be lost, nothing
may be posted twice, and the server must come back by itself once space is back."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from bot.app import signature_for
from tests.conftest import APP_ID, REPO, SECRET, event_payload, free_port

ROOT = Path(__file__).resolve().parent.parent
BOT_LOGIN = "first-responder[bot]"


class Serve:
    """`python -m bot serve` in a subprocess, on loopback, talking to the stand-in."""

    def __init__(self, tmp_path: Path, standin, app_key, db_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self.env = dict(os.environ, GITHUB_APP_ID=str(APP_ID), GITHUB_PRIVATE_KEY=app_key[0],
                        GITHUB_WEBHOOK_SECRET=SECRET, GITHUB_API_URL=standin.url, DATABASE_PATH=str(db_path),
                        HOST="127.0.0.1", PORT=str(self.port), DISABLE_SCHEDULER="1", WRITE_SPACING_SECONDS="0",
                        LOG_LEVEL="INFO", PYTHONPATH=str(ROOT))
        for name in ("DRY_RUN", "LOCAL_MODEL_PATH", "OPENAI_API_KEY"):
            self.env.pop(name, None)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve", cwd=str(ROOT),
                                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        for _ in range(600):
            if self.proc.returncode is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                async with session.get(f"{self.url}/health") as resp:
                    await resp.read()
                    return  # it answers HTTP: up (readiness is /health's business, not this test's)
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        raise AssertionError(f"serve did not come up:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # SIGKILL: no cleanup, no flush, as a crash or the OOM killer would

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def post(session: aiohttp.ClientSession, url: str, event: str, payload: dict, delivery: str) -> int | None:
    """Send one signed delivery; its HTTP status, or None if the connection failed."""
    body = json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
               "X-Hub-Signature-256": signature_for(SECRET, body), "User-Agent": "GitHub-Hookshot/test"}
    try:
        async with session.post(f"{url}/webhook", data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


def db_statuses(db_path: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute("SELECT id, status FROM deliveries").fetchall())
    finally:
        conn.close()


async def wait_done(db_path: Path, ids: set[str], serve: Serve, timeout: float = 180.0) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for _ in range(int(timeout / 0.2)):
        statuses = db_statuses(db_path)
        if all(statuses.get(i) in ("done", "failed", "skipped") for i in ids):
            return statuses
        assert serve.proc.returncode is None, serve.log()[-3000:]
        await asyncio.sleep(0.2)
    raise AssertionError(f"not finished: { {i: statuses.get(i) for i in ids if statuses.get(i) != 'done'} }\n"
                         f"{serve.log()[-3000:]}")


def refused_close(standin, issue: dict, delivery: str) -> tuple[str, dict]:
    """A `/close` from someone without permission: the bot answers with exactly one refusal reply."""
    comment = standin.add_comment(REPO, issue["number"], "/close", user="mallory")
    return delivery, event_payload("issue_comment.created", issue=standin.issue(REPO, issue["number"]),
                                   comment=comment, sender="mallory")


def bot_comments(standin, number: int) -> list[dict]:
    return [c for c in standin.comments(REPO, number) if c["user"]["login"] == BOT_LOGIN]


async def test_kill_9_mid_burst_loses_nothing_and_posts_nothing_twice(tmp_path, standin, app_key):
    db_path = tmp_path / "bot.db"
    issues = [standin.add_issue(REPO, f"Problem {i}", "Something breaks.", user="bob") for i in range(40)]
    deliveries = [refused_close(standin, issue, f"burst-{i}") for i, issue in enumerate(issues)]
    serve = Serve(tmp_path, standin, app_key, db_path)
    async with aiohttp.ClientSession() as session:
        await serve.start(session)
        acked: list[str] = []
        queue = list(deliveries)

        async def sender() -> None:
            while queue:
                delivery, payload = queue.pop(0)
                if await post(session, serve.url, "issue_comment", payload, delivery) == 202:
                    acked.append(delivery)
                    if len(acked) == 15:
                        serve.kill()  # mid-burst: requests in flight and deliveries being handled die with it

        await asyncio.gather(*(sender() for _ in range(6)))
        await serve.proc.wait()
        assert 15 <= len(acked) < len(deliveries), "the kill did not land mid-burst"
        stored = db_statuses(db_path)
        assert set(acked) <= set(stored), "a 202 must mean durably queued"
        # Restart on the same file; GitHub redelivers what was not acknowledged (and, as it may, some that were).
        await serve.start(session)
        for delivery, payload in deliveries:
            if delivery not in acked or delivery in acked[:5]:
                assert await post(session, serve.url, "issue_comment", payload, delivery) == 202
        statuses = await wait_done(db_path, {d for d, _ in deliveries}, serve)
        await serve.stop()
    assert {statuses[d] for d, _ in deliveries} == {"done"}, serve.log()[-3000:]
    for issue in issues:
        replies = bot_comments(standin, issue["number"])
        assert len(replies) == 1, (issue["number"], [c["body"] for c in replies])
    writes = [r for r in standin.writes() if r["method"] == "POST" and r["path"].endswith("/comments")]
    assert len(writes) == len(issues)


def _fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem holding ``path`` until only ``leave`` bytes are free; returns the filler file."""
    filler = path / "filler.bin"
    chunk = b"\0" * 65536
    with filler.open("wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def disk_report(path: Path) -> str:
    """What is on the small disk and how full it is (for failure messages)."""
    files = {p.name: p.stat().st_size for p in path.iterdir()}
    usage = shutil.disk_usage(path)
    return f"files {files}, free {usage.free} of {usage.total} bytes"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 MB tmpfs, so "disk full" is real without touching the machine's disks (needs root and mount)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot simulate a full disk")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk: {result.stderr.strip()[:200]}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


async def test_disk_full_gives_clear_errors_and_recovers_when_space_is_back(tmp_path, tiny_disk, standin, app_key):
    db_path = tiny_disk / "bot.db"
    issues = [standin.add_issue(REPO, f"Disk {i}", "Something breaks.", user="bob") for i in range(30)]
    # Padding in the payload (GitHub sends bodies of many KB) makes each delivery need new pages on disk.
    deliveries = []
    for i, issue in enumerate(issues):
        delivery, payload = refused_close(standin, issue, f"disk-{i}")
        payload["padding"] = uuid.uuid4().hex * 500  # 16 KB
        deliveries.append((delivery, payload))
    serve = Serve(tmp_path, standin, app_key, db_path)
    async with aiohttp.ClientSession() as session:
        await serve.start(session)
        # Almost full: the first deliveries are stored (and then handled on a full disk), the rest cannot be.
        filler = _fill(tiny_disk, leave=192 * 1024)
        statuses = [await post(session, serve.url, "issue_comment", payload, delivery)
                    for delivery, payload in deliveries]
        refused = [d for (d, _), status in zip(deliveries, statuses) if status != 202]
        assert refused, f"the disk never filled up: {statuses}"
        assert None not in statuses, "the server must answer (an error), not hang up or die"
        assert all(status >= 500 for (d, _), status in zip(deliveries, statuses) if d in refused)
        assert serve.proc.returncode is None
        assert len(refused) < len(deliveries), f"nothing was stored before the disk filled up: {statuses}"
        assert "database or disk is full" in serve.log(), serve.log()[-3000:]  # the log says why
        await asyncio.sleep(1.0)  # the worker meets the full disk on the stored ones, and keeps going
        # Space comes back: everything acknowledged is handled, and the refused ones go through when resent.
        filler.unlink()
        for delivery, payload in deliveries:
            if delivery in refused:
                status = await post(session, serve.url, "issue_comment", payload, delivery)
                assert status == 202, (disk_report(tiny_disk), serve.log()[-2000:])
        final = await wait_done(db_path, {d for d, _ in deliveries}, serve)
        await serve.stop()
    assert {final[d] for d, _ in deliveries} == {"done"}
    for issue in issues:
        assert len(bot_comments(standin, issue["number"])) == 1


# Another process (a backup, a migration, someone's `sqlite3` shell) holds the write lock: first it makes
# the stored deliveries due, then it keeps the lock for argv[2] seconds.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("UPDATE deliveries SET next_attempt_at = 0")
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


async def test_database_locked_by_another_process_the_server_recovers_by_itself(tmp_path, standin, app_key):
    from bot.db import open_db
    from bot.queue import enqueue

    db_path = tmp_path / "bot.db"
    issues = [standin.add_issue(REPO, f"Locked {i}", "Something breaks.", user="bob") for i in range(5)]
    db = open_db(str(db_path))
    ids = set()
    for i, issue in enumerate(issues):  # stored earlier, waiting for a retry an hour from now
        delivery, payload = refused_close(standin, issue, f"locked-{i}")
        enqueue(db, delivery, "issue_comment", payload)
        ids.add(delivery)
    db.execute("UPDATE deliveries SET next_attempt_at = ?", [9e9])
    db.conn.close()
    serve = Serve(tmp_path, standin, app_key, db_path)
    serve.env["WORKER_BUSY_TIMEOUT_SECONDS"] = "0.5"
    async with aiohttp.ClientSession() as session:
        await serve.start(session)
        locker = await asyncio.create_subprocess_exec(sys.executable, "-c", LOCKER, str(db_path), "10",
                                                      stdout=asyncio.subprocess.PIPE)
        try:
            assert (await locker.stdout.readline()).strip() == b"locked"
            for _ in range(200):  # the worker meets the lock when it next looks (within 5 s)
                if "database is locked" in serve.log():
                    break
                await asyncio.sleep(0.1)
            assert locker.returncode is None, "the lock ended before the worker met it"
            assert "database is locked" in serve.log(), serve.log()[-3000:]
            assert await locker.wait() == 0
        finally:
            if locker.returncode is None:
                locker.kill()
                await locker.wait()
        statuses = await wait_done(db_path, ids, serve)
        await serve.stop()
    assert {statuses[d] for d in ids} == {"done"}
    assert "queue worker recovered" in serve.log()
    for issue in issues:
        assert len(bot_comments(standin, issue["number"])) == 1
