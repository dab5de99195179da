"""The queue worker under faults (issue #11, items 11, 13, 14, 15, 18, 20): a database locked by another
process, a worker task that ends, head-of-line starvation, one failing handler among several, a model
that cannot load, an uninstalled installation, and the pruning of old payloads. Real SQLite files, a
real second process holding the lock, the real server against the GitHub stand-in."""
from __future__ import annotations

import asyncio
import itertools
import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings
from bot.db import open_db
from bot.queue import Worker, enqueue, prune_payloads, retry
from tests.conftest import INSTALLATION_ID, REPO, event_payload, start_server

ROOT = Path(__file__).resolve().parent.parent

# Holds SQLite's write lock on the file for argv[2] seconds, as another process (a backup, a migration,
# `sqlite3` in a shell) would.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


_SEQUENCE = itertools.count(1)


def payload(issue: int | None, repo: str = REPO, installation: int = 1) -> dict:
    # Each body differs (a comment id), as GitHub's do: the same body twice is a replay and is stored once.
    data = {"action": "edited", "repository": {"full_name": repo}, "installation": {"id": installation},
            "comment": {"id": next(_SEQUENCE)}}
    if issue is not None:
        data["issue"] = {"number": issue}
    return data


def statuses(db) -> dict[str, str]:
    return {row[0]: row[1] for row in db.execute("SELECT id, status FROM deliveries")}


async def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ 11: supervision


async def test_worker_recovers_by_itself_after_another_process_locked_the_database(tmp_path, caplog):
    path = str(tmp_path / "q.db")
    db = open_db(path)
    handled: list[str] = []

    async def handler(row):
        handled.append(row["id"])

    for i in range(3):
        enqueue(db, f"d{i}", "issues", payload(i + 1))
    locker = await asyncio.create_subprocess_exec(sys.executable, "-c", LOCKER, path, "4",
                                                  stdout=asyncio.subprocess.PIPE)
    assert (await locker.stdout.readline()).strip() == b"locked"
    worker = Worker(db, handler, busy_timeout=0.2, failing_after=1.0, max_backoff=0.5, base_delay=0.01)
    worker.start()
    try:
        await wait_for(lambda: worker.errors >= 2)
        # While the other process holds the lock: nothing was lost or half-done, the worker is alive
        # and keeps trying, and problems() says so once the failures last longer than the bound.
        assert locker.returncode is None
        assert set(statuses(db).values()) == {"pending"} and handled == []
        assert not worker._task.done()
        reported = worker.problems(now=worker.failing_since + 2.0)
        assert any("failing" in p and "database is locked" in p for p in reported), reported
        assert await locker.wait() == 0
        await worker.drain(timeout=20)
        assert sorted(handled) == ["d0", "d1", "d2"]
        assert set(statuses(db).values()) == {"done"}
        assert worker.problems() == []
        assert "database is locked" in caplog.text and "recovered" in caplog.text
    finally:
        if locker.returncode is None:
            locker.kill()
            await locker.wait()
        await worker.stop()


async def test_worker_task_that_ends_is_logged_and_restarted(tmp_path, caplog):
    db = open_db(str(tmp_path / "q.db"))
    handled: list[str] = []

    async def handler(row):
        handled.append(row["id"])

    worker = Worker(db, handler, base_delay=0.05)
    assert worker.problems() == ["queue worker not started"]
    task = worker.start()
    await asyncio.sleep(0.05)
    assert worker.problems() == []
    task.cancel()  # as if something killed the task from outside
    await asyncio.gather(task, return_exceptions=True)
    assert any("not running" in p for p in worker.problems())
    enqueue(db, "after", "issues", payload(7))
    try:
        await wait_for(lambda: handled == ["after"])
        assert worker.restarts == 1 and worker._task is not task and not worker._task.done()
        assert "ended unexpectedly" in caplog.text
        await wait_for(lambda: statuses(db)["after"] == "done")
        assert worker.problems() == []
    finally:
        await worker.stop()


async def test_problems_reports_an_old_pending_delivery(tmp_path):
    db = open_db(str(tmp_path / "q.db"))

    async def handler(row):
        pass

    worker = Worker(db, handler, stall_after=600)
    worker._task = asyncio.get_running_loop().create_future()  # "running", without draining the queue
    enqueue(db, "old", "issues", payload(1))
    received = db.execute("SELECT received_at FROM deliveries").fetchone()[0]
    assert worker.problems(now=received + 10) == []
    [problem] = worker.problems(now=received + 601)
    assert "oldest pending delivery is 601s old" in problem


# ------------------------------------------------------------------ 15: fair scheduling


async def test_one_busy_issue_does_not_starve_another(tmp_path):
    db = open_db(str(tmp_path / "q.db"))
    started: list[str] = []

    async def handler(row):
        started.append(row["id"])
        await asyncio.sleep(0)

    for i in range(260):
        enqueue(db, f"a{i:03d}", "issue_comment", payload(1))
    enqueue(db, "b", "issue_comment", payload(2))
    worker = Worker(db, handler, concurrency=2)
    task = asyncio.create_task(worker.run())
    try:
        await worker.drain(timeout=120)
    finally:
        await worker.stop()
        task.cancel()
    assert started.index("b") < 3, started[:10]
    assert [x for x in started if x != "b"] == [f"a{i:03d}" for i in range(260)]  # issue order kept


async def test_installations_take_turns(tmp_path):
    db = open_db(str(tmp_path / "q.db"))
    started: list[str] = []

    async def handler(row):
        started.append(row["id"])

    for i in range(30):  # one installation with a backlog over many issues
        enqueue(db, f"busy{i}", "issues", payload(100 + i, repo="big/repo", installation=1))
    enqueue(db, "quiet", "issues", payload(1, repo="small/repo", installation=2))
    worker = Worker(db, handler, concurrency=1)
    task = asyncio.create_task(worker.run())
    try:
        await worker.drain(timeout=60)
    finally:
        await worker.stop()
        task.cancel()
    assert started.index("quiet") <= 1, started[:5]
    assert len(started) == 31


# ------------------------------------------------------------------ 18: retention


def test_payloads_of_done_deliveries_are_pruned_after_the_retention_period(tmp_path):
    db = open_db(str(tmp_path / "q.db"))
    day = 86400.0
    now = 1_800_000_000.0
    for delivery, status, finished in [("old-done", "done", now - 8 * day), ("new-done", "done", now - 1 * day),
                                       ("old-failed", "failed", now - 30 * day), ("pending", "pending", None)]:
        enqueue(db, delivery, "issues", payload(1))
        db.execute("UPDATE deliveries SET status = ?, finished_at = ? WHERE id = ?", [status, finished, delivery])
    db.execute("INSERT INTO delivery_handlers VALUES ('old-done', 'triage.on_opened', ?)", [now - 8 * day])
    db.execute("INSERT INTO audit (ts, delivery_id, repo, issue, action, details, result) VALUES"
               " (?, 'old-done', ?, 1, 'comment', '{}', 'ok')", [now - 8 * day, REPO])

    assert prune_payloads(db, 7, now=now) == 1
    payloads = {row[0] for row in db.execute("SELECT id FROM delivery_payloads")}
    assert payloads == {"new-done", "old-failed", "pending"}
    # The deliveries row (metadata) and the audit log stay; the handler marks of the pruned one go.
    assert statuses(db)["old-done"] == "done"
    assert db.execute("SELECT count(*) FROM audit WHERE delivery_id = 'old-done'").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM delivery_handlers").fetchone()[0] == 0
    assert retry(db, "old-failed")  # a failed delivery can still be retried: its payload is there
    assert prune_payloads(db, 7, now=now) == 0  # idempotent
    assert prune_payloads(db, 0.5, now=now) == 1  # a shorter period takes the day-old one too


async def test_retention_runs_at_scheduler_start(tmp_path, settings, standin):
    from bot.scheduler import prune_once

    settings = dataclasses.replace(settings, delivery_retention_days=2.0)
    server, runner = await start_server(settings)
    try:
        db = server.db
        enqueue(db, "done-long-ago", "issues", payload(1))
        db.execute("UPDATE deliveries SET status = 'done', finished_at = ? WHERE id = 'done-long-ago'",
                   [time.time() - 3 * 86400])
        assert await prune_once(server.services) == 1
        assert db.execute("SELECT count(*) FROM delivery_payloads").fetchone()[0] == 0
    finally:
        await server.session.close()
        await runner.cleanup()


def test_retention_days_from_the_environment():
    assert Settings.from_env({}, require_app=False).delivery_retention_days == 7.0
    assert Settings.from_env({"DELIVERY_RETENTION_DAYS": "30"}, require_app=False).delivery_retention_days == 30
    with pytest.raises(ConfigError, match="DELIVERY_RETENTION_DAYS"):
        Settings.from_env({"DELIVERY_RETENTION_DAYS": "a week"}, require_app=False)


async def test_a_delivery_whose_payload_is_gone_is_parked_not_crashing_the_worker(tmp_path):
    db = open_db(str(tmp_path / "q.db"))
    enqueue(db, "lost", "issues", payload(1))
    db.execute("DELETE FROM delivery_payloads")

    async def handler(row):
        raise AssertionError("must not run without a payload")

    worker = Worker(db, handler)
    worker.start()
    try:
        await worker.drain(timeout=10)
    finally:
        await worker.stop()
    assert statuses(db)["lost"] == "failed"


# ------------------------------------------------------------------ 13: per-handler completion


async def test_a_failing_index_handler_does_not_rerun_triage(settings, standin, fake_model):
    from bot.models.base import Prediction

    fake_model.default = Prediction(kind="bug", confidence=0.99, summary="It crashes on start.")
    settings = dataclasses.replace(settings, max_attempts=5)
    server, runner = await start_server(settings, models=fake_model)
    server.services.worker.base_delay = 0.01
    try:
        # A real fault in the index's own table: every write to it fails until the trigger is dropped.
        server.db.execute("CREATE TRIGGER index_broken BEFORE INSERT ON issues"
                          " BEGIN SELECT RAISE(ABORT, 'index storage unavailable'); END")
        issue = standin.add_issue(REPO, "Crash on start", "It crashes when I start it.", user="alice")
        await server.send("issues", event_payload("issues.opened", issue=issue), delivery="d-13")
        await server.drain(timeout=60)
        row = server.db.execute("SELECT status, attempts, error FROM deliveries WHERE id = 'd-13'").fetchone()
        assert row[0] == "failed" and row[1] == 5 and "index.on_issue_changed" in row[2]
        label_posts = [r for r in standin.writes() if r["method"] == "POST"
                       and r["path"] == f"/repos/{REPO}/issues/{issue['number']}/labels"]
        posted = [label for r in label_posts for label in r["json"]["labels"]]
        assert len(fake_model.calls) == 1  # one model call: triage ran once, not once per attempt
        assert posted.count("bug") == 1 and len(posted) == len(set(posted)), posted
        bot_comments = [c for c in standin.comments(REPO, issue["number"]) if c["user"]["type"] == "Bot"]
        assert len(bot_comments) == 1
        # Once the index works again, a retry runs only the handler that has not finished.
        server.db.execute("DROP TRIGGER index_broken")
        assert retry(server.db, "d-13")
        server.services.worker.wake.set()
        await server.drain(timeout=30)
        assert server.db.execute("SELECT status FROM deliveries WHERE id = 'd-13'").fetchone()[0] == "done"
        assert len(fake_model.calls) == 1
        assert server.db.execute("SELECT count(*) FROM issues WHERE number = ?", [issue["number"]]).fetchone()[0] == 1
    finally:
        await server.session.close()
        await runner.cleanup()


# ------------------------------------------------------------------ 14: LOCAL_MODEL_PATH


def test_serve_refuses_a_missing_local_model_path(tmp_path, app_key):
    missing = tmp_path / "models" / "nope.gguf"
    env = dict(os.environ, GITHUB_APP_ID="1", GITHUB_PRIVATE_KEY=app_key[0], GITHUB_WEBHOOK_SECRET="s",
               DATABASE_PATH=str(tmp_path / "bot.db"), PORT="18999", HOST="127.0.0.1", LOCAL_MODEL_PATH=str(missing),
               PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)  # (before the fix: it started serving)
    assert result.returncode != 0
    assert "LOCAL_MODEL_PATH" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


async def test_a_model_that_cannot_load_fails_only_the_handlers_that_need_it(settings, standin, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    settings = dataclasses.replace(settings, local_model_path=str(broken))
    settings.check_local_model()  # the file exists: start-up lets it through; loading it is what fails
    server, runner = await start_server(settings)  # models=None: the server builds the cascade itself
    server.services.worker.base_delay = 0.01
    try:
        # A maintainer's command needs no model: it works, and the model is never even loaded.
        issue = standin.add_issue(REPO, "Crash on start", "It crashes.", user="alice")
        comment = standin.add_comment(REPO, issue["number"], "/label bug", user="maint")
        await server.send("issue_comment", event_payload("issue_comment.created", issue=issue, comment=comment,
                                                         sender="maint"), delivery="cmd")
        await server.drain(timeout=60)
        assert server.db.execute("SELECT status FROM deliveries WHERE id = 'cmd'").fetchone()[0] == "done"
        assert "bug" in {label["name"] for label in standin.issue(REPO, issue["number"])["labels"]}
        assert server.services._models is None
        # Triage needs it: only triage fails (with the reason), the other handlers finished once.
        other = standin.add_issue(REPO, "Another crash", "Also crashes.", user="alice")
        await server.send("issues", event_payload("issues.opened", issue=other), delivery="needs-model")
        await server.drain(timeout=60)
        status, error = server.db.execute("SELECT status, error FROM deliveries WHERE id = 'needs-model'").fetchone()
        assert status == "failed" and "triage" in error and "model could not be loaded" in error
        finished = {row[0] for row in server.db.execute(
            "SELECT handler FROM delivery_handlers WHERE delivery_id = 'needs-model'")}
        assert "index.on_issue_changed" in finished and not any(h.startswith("triage.") for h in finished)
    finally:
        await server.session.close()
        await runner.cleanup()


# ------------------------------------------------------------------ 20: uninstalled installation


async def test_a_delivery_for_an_uninstalled_installation_is_skipped_at_once(settings, standin):
    server, runner = await start_server(settings)
    server.services.worker.base_delay = 0.01
    try:
        data = event_payload("issues.opened", issue=standin.add_issue(REPO, "Hi", "x"), repo="gone-org/gone")
        data["installation"]["id"] = 999  # GitHub answers 404 for this installation's token
        await server.send("issues", data, delivery="orphan")
        await server.drain(timeout=30)
        status, attempts, error = server.db.execute(
            "SELECT status, attempts, error FROM deliveries WHERE id = 'orphan'").fetchone()
        assert (status, attempts) == ("skipped", 1)
        assert "installation 999" in error and "404" in error
        token_calls = [r for r in standin.requests if r["path"].endswith("/installations/999/access_tokens")]
        assert len(token_calls) == 1
    finally:
        await server.session.close()
        await runner.cleanup()


# ------------------------------------------------------------------ siblings: other background loops


async def test_scheduler_loop_survives_a_database_error(tmp_path, caplog, settings):
    from types import SimpleNamespace

    from bot import scheduler

    db = open_db(str(tmp_path / "s.db"))
    db.execute("DROP TABLE installations")  # every listing of installed repositories now fails
    services = SimpleNamespace(db=db, settings=settings)
    task = asyncio.create_task(scheduler._every(services, 0.05, "bot.features.lifecycle", "scheduled_sweep", 0))
    try:
        await wait_for(lambda: caplog.text.count("could not list the installed repositories") >= 2)
        assert not task.done()  # (before: the first error ended the loop for good, silently)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_background_task_is_logged(settings, standin, caplog):
    server, runner = await start_server(settings)
    try:
        async def backfill_that_fails():
            raise RuntimeError("backfill broke")

        task = server.services.spawn(backfill_that_fails())
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        assert "background task" in caplog.text and "backfill broke" in caplog.text
    finally:
        await server.session.close()
        await runner.cleanup()
